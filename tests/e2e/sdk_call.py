"""Calls one SES action on a Kiln endpoint with the official Tencent Cloud
Python SDK and prints the outcome as one JSON line:
{"ok": true, "response": {...}} or {"ok": false, "code": "...", "message": "..."}.

Usage: sdk_call.py HOST:PORT SECRET_ID SECRET_KEY ACTION [PARAMS_JSON]
"""
import json
import sys

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.ses.v20201002 import ses_client

endpoint, secret_id, secret_key, action = sys.argv[1:5]
params = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
profile = ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=endpoint, reqTimeout=10))
client = ses_client.SesClient(credential.Credential(secret_id, secret_key), "ap-guangzhou", profile)
try:
    response = client.call_json(action, params)
    print(json.dumps({"ok": True, "response": response}))
except TencentCloudSDKException as e:
    print(json.dumps({"ok": False, "code": e.get_code(), "message": e.get_message()}))
