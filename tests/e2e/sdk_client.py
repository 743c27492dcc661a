"""Calls SES actions on a Kiln endpoint with the official Tencent Cloud
Python SDK, through its typed models (request classes, client methods,
response classes), as an application would.

Reads one JSON request per line on stdin:
  {"id": SECRET_ID, "key": SECRET_KEY, "action": ACTION, "params": {...}}
and prints one JSON line per request:
  {"ok": true, "response": {...}} or {"ok": false, "code": "...", "message": "..."}

Usage: sdk_client.py HOST:PORT [http|https [CA_FILE]]   (https: the SDK's
default; CA_FILE: the SDK's `certification`, a private CA to trust)
"""
import json
import sys
import warnings

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.ses.v20201002 import models, ses_client

endpoint = sys.argv[1]
protocol = sys.argv[2] if len(sys.argv) > 2 else "http"
ca = sys.argv[3] if len(sys.argv) > 3 else None
profile = ClientProfile(httpProfile=HttpProfile(protocol=protocol, endpoint=endpoint, reqTimeout=30, certification=ca))
clients = {}

for line in sys.stdin:
    req = json.loads(line)
    key = (req["id"], req["key"])
    if key not in clients:
        clients[key] = ses_client.SesClient(credential.Credential(*key), "ap-guangzhou", profile)
    client = clients[key]
    action = req["action"]
    try:
        request_class = getattr(models, action + "Request", None)
        if request_class is None:
            # Not an action of this SDK: the generic call, to test refusals.
            out = {"ok": True, "response": client.call_json(action, req.get("params", {}))["Response"]}
        else:
            request = request_class()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a field the model lacks is a test bug
                request.from_json_string(json.dumps(req.get("params", {})))
            response = getattr(client, action)(request)
            out = {"ok": True, "response": json.loads(response.to_json_string())}
    except TencentCloudSDKException as e:
        out = {"ok": False, "code": e.get_code(), "message": e.get_message()}
    except Exception as e:  # noqa: BLE001 - reported to the test
        out = {"ok": False, "code": "ClientError", "message": repr(e)}
    print(json.dumps(out), flush=True)
