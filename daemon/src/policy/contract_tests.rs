//! The hook contract as a policy author meets it, through the real Lua
//! host: a closed set of verdicts (an answer Kiln does not understand is a
//! failure, never an accept), hook names and policy parts checked at load,
//! plugin settings declared, checked and documented.

use super::PolicyError;
use super::decisions::Decision;
use super::testing::Fixture;
use serde_json::json;

fn load_error(f: &Fixture, policy: &str) -> String {
    match super::lua_host::LuaHost::new(&f.settings(policy), f.store.clone()) {
        Err(PolicyError::Load(e)) => e,
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("loaded: {policy}"),
    }
}

#[tokio::test]
async fn an_answer_kiln_does_not_understand_is_a_failure() {
    let f = Fixture::new();
    // (hook, answer, what the failure says)
    let cases = [
        (
            "on_rcpt_to",
            "{ action = 'deny' }",
            "unknown variant `deny`",
        ),
        (
            "on_mail_from",
            "{ action = 'REJECT' }",
            "unknown variant `REJECT`",
        ),
        (
            "on_connect",
            "{ acton = 'reject' }",
            "unknown field `acton`",
        ),
        ("on_connect", "{ code = 'X' }", "missing field `action`"),
        (
            "on_rcpt_to",
            "{ action = 'send' }",
            "on_rcpt_to does not answer action = \"send\"",
        ),
        (
            "check_limits",
            "{ action = 'accept' }",
            "check_limits does not answer action = \"accept\"",
        ),
        (
            "check_limits",
            "{ action = 'defer', retry_at = 'tomorrow' }",
            "retry_at: invalid type",
        ),
        (
            "check_limits",
            "{ action = 'send', retry_at = 5 }",
            "retry_at goes with action = \"defer\"",
        ),
        (
            "on_mail_from",
            "{ action = 'reject', drop = { a = 'b' } }",
            "on_mail_from does not answer drop",
        ),
        (
            "content_filter",
            "{ action = 'reject', reason = 'spam' }",
            "unknown field `reason`",
        ),
        ("on_connect", "'reject'", "bad return value"),
        ("on_connect", "{ action = 1 }", "bad return value"),
    ];
    for (hook, answer, says) in cases {
        let policy =
            format!("return {{ hooks = {{\n  {hook} = function() return {answer} end,\n}} }}");
        let host = f.host(&policy);
        let arg = json!({"recipients": ["a@x.test"]});
        match host.call::<_, Decision>(hook, &arg).await {
            Err(PolicyError::Script { message, .. }) => {
                assert!(message.contains(says), "{hook} {answer}: {message}");
                assert!(
                    message.contains("policy.lua:2:"),
                    "{hook} {answer}: {message}"
                );
            }
            other => panic!("{hook} {answer} was taken: {other:?}"),
        }
    }
    // What each may answer is taken.
    for (hook, answer) in [
        ("on_rcpt_to", "{ action = 'reject', smtp = '550 5.1.1 No' }"),
        ("on_connect", "{ action = 'defer' }"),
        (
            "check_limits",
            "{ action = 'send', drop = { ['a@x.test'] = 'FailedOperation.FrequencyLimit' } }",
        ),
        (
            "check_limits",
            "{ action = 'defer', retry_at = 5, code = 'X' }",
        ),
        (
            "content_filter",
            "{ action = 'reject', reasons = { 'a', 'b' } }",
        ),
    ] {
        let policy = format!("return {{ hooks = {{ {hook} = function() return {answer} end }} }}");
        let d = f.host(&policy).call::<_, Decision>(hook, &json!({})).await;
        assert!(matches!(d, Ok(Some(_))), "{hook} {answer}: {d:?}");
    }
}

#[tokio::test]
async fn a_misspelt_hook_or_policy_part_fails_the_load() {
    let f = Fixture::new();
    let e = load_error(&f, "return { hooks = { on_rcpt = function() end } }");
    assert!(e.contains("unknown hook \"on_rcpt\""), "{e}");
    let e = load_error(&f, "return { hook = { on_rcpt_to = function() end } }");
    assert!(e.contains("policy.lua") && e.contains("\"hook\""), "{e}");
}

#[tokio::test]
async fn plugin_settings_are_checked_at_load() {
    let f = Fixture::new();
    let cases = [
        (
            "limits = { rate_per_secnd = 5 }",
            "config.limits.rate_per_secnd: plugin limits has no such setting",
        ),
        (
            "limits = { rate_per_second = '5' }",
            "config.limits.rate_per_second: expected a number, got string",
        ),
        (
            "limits = { max_size = 1.5 }",
            "config.limits.max_size: expected an integer, got number",
        ),
        (
            "warmup = { curve = { 200, 'x' } }",
            "config.warmup.curve: expected a list of numbers",
        ),
        (
            "warmup = { applies_to = 'batch' }",
            "config.warmup.applies_to: expected a list of strings, got string",
        ),
        ("reputation = 5", "config.reputation: expected a table"),
        // Checked to the leaf: a level typed as a string, a misspelt key,
        // a level out of the table, in a map of domains.
        (
            "reputation = { domains = { ['shop.example.com'] = { level = '8' } } }",
            "config.reputation.domains[\"shop.example.com\"].level: expected an integer, got string",
        ),
        (
            "reputation = { domains = { ['shop.example.com'] = { levl = 8 } } }",
            "config.reputation.domains[\"shop.example.com\"].levl: no such setting (there are: level, min_level)",
        ),
        (
            "reputation = { domains = { ['shop.example.com'] = { level = 25 } } }",
            "level: expected an integer from 1 to 20, got 25",
        ),
        (
            "reputation = { domains = { ['shop.example.com'] = 8 } }",
            "config.reputation.domains[\"shop.example.com\"]: expected a table of settings, got integer",
        ),
        (
            "egress = { domains = { ['news.example.com'] = 5 } }",
            "config.egress.domains[\"news.example.com\"]: expected a string, got integer",
        ),
        (
            "warmup = { identities = { ['a.test'] = { curve = { 'x' } } } }",
            "config.warmup.identities[\"a.test\"].curve: expected a list of numbers",
        ),
        (
            "limitz = { rate_per_second = 5 }",
            "config.limitz: no plugin has settings of that name",
        ),
    ];
    for (config, says) in cases {
        let e = load_error(&f, &format!("return {{ config = {{ {config} }} }}"));
        assert!(
            e.contains("policy.lua: ") && e.contains(says),
            "{config}: {e}"
        );
    }
    // Right ones load, 1e9 is an integer, and a disabled plugin's settings
    // are no mistake.
    f.host("return { config = { limits = { rate_per_second = 1e9, max_size = 1e6 }, warmup = { curve = { 1e12 } } } }");
    f.host("return { config = { egress = { pools = {} } }, disable = { 'egress' } }");
}

/// Every plugin's settings as docs/lua-api.md shows them, generated from
/// the declarations.
async fn settings_table(host: &super::lua_host::LuaHost) -> String {
    let schemas = host.eval(
        "local out = {}
         for plugin, schema in pairs(kiln._settings) do
           for name, spec in pairs(schema) do
             local t = spec.type
             if spec.items then t = t .. ' of ' .. spec.items .. 's' end
             if type(spec.values) == 'string' then t = t .. ' of ' .. spec.values .. 's' end
             if type(spec.values) == 'table' then
               local keys = {}
               for k in pairs(spec.values) do keys[#keys + 1] = k end
               table.sort(keys)
               t = t .. ' of { ' .. table.concat(keys, ', ') .. ' }'
             end
             local d = spec.default
             if type(d) == 'table' then
               local parts = {}
               if #d > 0 then
                 for _, v in ipairs(d) do parts[#parts + 1] = tostring(v) end
               else
                 local keys = {}
                 for k in pairs(d) do keys[#keys + 1] = k end
                 table.sort(keys)
                 for _, k in ipairs(keys) do parts[#parts + 1] = k .. ' = ' .. tostring(d[k]) end
               end
               d = '{ ' .. table.concat(parts, ', ') .. ' }'
               if #parts == 0 then d = '{}' end
             elseif type(d) == 'number' and d == math.floor(d) then
               d = string.format('%d', d)
             else
               d = tostring(d)
             end
             out[#out + 1] = '| ' .. plugin .. ' | `' .. name .. '` | ' .. t .. ' | `' .. d .. '` | ' .. spec.doc .. ' |'
           end
         end
         table.sort(out)
         return table.concat(out, '\\n')",
    )
    .await
    .expect("schemas");
    schemas.as_str().expect("a string").to_string()
}

#[tokio::test]
async fn docs_list_every_plugin_setting() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let rows = settings_table(&host).await;
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/lua-api.md"))
        .expect("docs/lua-api.md");
    let want =
        format!("| plugin | setting | type | default | what |\n|---|---|---|---|---|\n{rows}\n");
    assert!(
        docs.contains(&want),
        "docs/lua-api.md must list the plugin settings as declared; the table is:\n\n{want}"
    );
}
