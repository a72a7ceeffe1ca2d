//! Examples in the manner of EMQX's rule SQL documentation, errors with positions, and the
//! print → parse round trip as a property.

use super::*;
use crate::sources;
use proptest::prelude::*;
use serde_json::json;

fn input(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("an object"),
    }
}

fn run(sql: &str, v: Value) -> Vec<Value> {
    let rule = Rule::compile(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let out = rule
        .apply(&input(v))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.into_iter().map(Value::Object).collect()
}

#[test]
fn select_with_where_on_a_nested_json_payload() {
    let sql = r#"SELECT payload.temp AS t, clientid FROM "sensors/+/data" WHERE payload.temp > 80"#;
    let msg = |t: i64| json!({"clientid": "c1", "topic": "sensors/1/data", "payload": json!({"temp": t}).to_string()});
    assert_eq!(run(sql, msg(85)), [json!({"t": 85, "clientid": "c1"})]);
    assert!(run(sql, msg(70)).is_empty());
    let topic = sources::Source::Topic("sensors/+/data".into());
    assert_eq!(Rule::compile(sql).unwrap().sources(), [topic]);
    // An alias is visible to WHERE and to the fields after it.
    let sql = r#"SELECT payload.x AS x, x * 2 AS y FROM "t/#" WHERE x > 0"#;
    let m = json!({"payload": "{\"x\": 3}"});
    assert_eq!(run(sql, m), [json!({"x": 3, "y": 6})]);
}

#[test]
fn foreach_do_incase_over_an_array_payload() {
    let sql = r#"FOREACH payload.sensors AS e
        DO clientid, e.name AS name, e.idx AS idx
        INCASE e.idx >= 1
        FROM "t/#""#;
    let payload = json!({"date": "2020-04-24", "sensors": [
        {"name": "a", "idx": 0}, {"name": "b", "idx": 1}, {"name": "c", "idx": 2}]});
    let out = run(
        sql,
        json!({"clientid": "c1", "payload": payload.to_string()}),
    );
    assert_eq!(
        out,
        [
            json!({"clientid": "c1", "name": "b", "idx": 1}),
            json!({"clientid": "c1", "name": "c", "idx": 2})
        ]
    );
    // Without DO: each element as `item`.
    let out = run(
        r#"FOREACH payload.l FROM "t""#,
        json!({"payload": "{\"l\": [1, 2]}"}),
    );
    assert_eq!(out, [json!({"item": 1}), json!({"item": 2})]);
}

#[test]
fn case_in_match_and_events() {
    let sql = r#"SELECT CASE WHEN payload.x < 0 THEN 0 WHEN payload.x > 7 THEN 7 ELSE payload.x END AS x FROM "t/#""#;
    for (x, want) in [(-3, 0), (9, 7), (4, 4)] {
        let m = json!({"payload": json!({"x": x}).to_string()});
        assert_eq!(run(sql, m), [json!({"x": want})]);
    }
    let sql = r#"SELECT clientid, topic FROM "$events/session_subscribed" WHERE topic =~ 't/#' AND qos IN (1, 2)"#;
    let ev = |t: &str, q: i64| json!({"clientid": "c", "topic": t, "qos": q});
    assert_eq!(run(sql, ev("t/a/b", 1)).len(), 1);
    assert!(run(sql, ev("x/a", 1)).is_empty());
    assert!(run(sql, ev("t/a", 0)).is_empty());
    let sql = r#"SELECT CASE qos WHEN 0 THEN 'zero' ELSE 'more' END AS q FROM "t" WHERE clientid NOT IN ('a', 'b')"#;
    assert_eq!(
        run(sql, json!({"qos": 0, "clientid": "c"})),
        [json!({"q": "zero"})]
    );
    assert!(run(sql, json!({"qos": 0, "clientid": "a"})).is_empty());
}

#[test]
fn paths_indexes_and_properties() {
    let sql = r#"SELECT pub_props.'User-Property'.k AS k, payload.l[1] AS first, payload.l[-1] AS last,
                 payload.l[9] AS none, user_property.k AS u FROM "t""#;
    let m = json!({"pub_props": {"User-Property": {"k": "v"}}, "user_property": {"k": "w"},
                   "payload": "{\"l\": [10, 20, 30]}"});
    assert_eq!(
        run(sql, m),
        [json!({"k": "v", "first": 10, "last": 30, "none": null, "u": "w"})]
    );
}

#[test]
fn arithmetic_and_strings() {
    let sql = r#"SELECT 7 div 2 AS a, 7 mod 2 AS b, 7 / 2 AS c, 2 * 3 + 1 AS d, '1' + 'a' AS e,
                 -payload.n AS f, 1 + payload.s AS g FROM "t""#;
    let out = run(sql, json!({"payload": "{\"n\": 4, \"s\": \"x\"}"}));
    assert_eq!(
        out,
        [json!({"a": 3, "b": 1, "c": 3.5, "d": 7, "e": "1a", "f": -4, "g": "1x"})]
    );
    let rule = Rule::compile(r#"SELECT 1 div 0 AS x FROM "t""#).unwrap();
    assert!(
        rule.apply(&Map::new()).is_err(),
        "division by zero is an exception"
    );
}

#[test]
fn functions_give_emqx_s_results() {
    let sql = r#"SELECT lower('ABC') AS a, upper('abc') AS b, trim('  x ') AS c,
        concat('a', 'b', 1) AS d, split('a/b//c', '/') AS e, nth(2, split('a/b/c', '/')) AS f,
        sprintf('Hello, ~s!', 'steve') AS g, base64_encode('hi') AS h, base64_decode('aGk=') AS i,
        md5('hello') AS j, sha('hello') AS k, sha256('hello') AS l, bin2hexstr('AB') AS m,
        hexstr2bin('4142') AS n, str(12) AS o, int('42') AS p, float(1) AS q, bool('true') AS r,
        substr('hello', 1, 3) AS s, replace('a-b-c', '-', '+') AS t, regex_match('abc123', '[0-9]+') AS u,
        regex_replace('a1b2', '[0-9]', '') AS v, map_get('a.b', json_decode('{"a": {"b": 5}}')) AS w,
        json_encode(map_put('k', 1, json_decode('{}'))) AS x, length([1, 2, 3]) AS y,
        contains(2, [1, 2]) AS z, first([1, 2]) AS aa, last([1, 2]) AS ab, abs(-3) AS ac,
        round(2.5) AS ad, floor(2.7) AS ae, ceil(2.1) AS af, power(2, 10) AS ag, sqrt(16) AS ah,
        coalesce(null, 'x') AS ai, is_null(payload.missing) AS aj, tokens('a,b;c', ',;') AS ak,
        unix_ts_to_rfc3339(0) AS al, rfc3339_to_unix_ts('1970-01-01T00:00:10Z') AS am
        FROM "t""#;
    let out = run(sql, json!({"payload": "{}"}));
    let want = json!({"a": "abc", "b": "ABC", "c": "x", "d": "ab1", "e": ["a", "b", "c"], "f": "b",
        "g": "Hello, steve!", "h": "aGk=", "i": "hi", "j": "5d41402abc4b2a76b9719d911017c592",
        "k": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
        "l": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "m": "4142", "n": "AB", "o": "12", "p": 42, "q": 1.0, "r": true, "s": "ell", "t": "a+b+c",
        "u": true, "v": "ab", "w": 5, "x": "{\"k\":1}", "y": 3, "z": true, "aa": 1, "ab": 2,
        "ac": 3, "ad": 3.0, "ae": 2.0, "af": 3.0, "ag": 1024.0, "ah": 4.0, "ai": "x", "aj": true,
        "ak": ["a", "b", "c"], "al": "1970-01-01T00:00:00Z", "am": 10});
    assert_eq!(out, [want]);
    // EMQX's documented example, and milliseconds with a negative offset.
    let sql = r#"SELECT format_date('second', '+08:00', '%Y-%m-%d %H:%M:%S%:z', 1653561612) AS a,
        format_date('millisecond', '-02:30', '%Y%m%dT%H%M%S.%3N%z', 1653561612345) AS b,
        format_date('second', 'Z', '100%% at %H', 0) AS c FROM "t""#;
    let want = json!({"a": "2022-05-26 18:40:12+08:00", "b": "20220526T081012.345-0230",
        "c": "100% at 00"});
    assert_eq!(run(sql, json!({})), [want]);
    let uuid = run(
        r#"SELECT uuid_v4() AS u, now_timestamp() AS n FROM "t""#,
        json!({}),
    );
    let u = uuid[0]["u"].as_str().unwrap().to_string();
    assert_eq!((u.len(), &u[14..15]), (36, "4"));
    assert!(uuid[0]["n"].as_i64().unwrap() > 1_700_000_000);
}

#[test]
fn errors_name_their_position() {
    let e = Rule::compile("SELECT a FROM \"t\"\nWHERE nosuch(a) > 1").unwrap_err();
    assert_eq!((e.line, e.column), (2, 7), "{e}");
    assert!(e.message.contains("unknown function nosuch"), "{e}");
    let e = Rule::compile(r#"SELECT lower(a, b) FROM "t""#).unwrap_err();
    assert_eq!((e.line, e.column), (1, 8));
    assert!(e.message.contains("lower takes 1 arguments, not 2"), "{e}");
    let e = Rule::compile(r#"SELECT a FROM t"#).unwrap_err();
    assert_eq!((e.line, e.column), (1, 15), "{e}");
    for bad in [
        r#"SELECT FROM "t""#,
        r#"SELECT a"#,
        r#"SELECT a FROM "t" WHERE"#,
        r#"SELECT 'open FROM "t""#,
        r#"SELECT a FROM "t" extra"#,
        "",
        "DELETE x",
        r#"SELECT CASE END FROM "t""#,
        r#"SELECT a # b FROM "t""#,
    ] {
        assert!(Rule::compile(bad).is_err(), "{bad}");
    }
    // Nesting is bounded: no input exhausts the stack.
    for deep in [
        "(".repeat(10_000),
        "not ".repeat(10_000),
        "- ".repeat(10_000),
        "lower(".repeat(10_000),
        "case when ".repeat(10_000),
        "[".repeat(10_000),
    ] {
        let e = Rule::compile(&format!("SELECT {deep} FROM \"t\"")).unwrap_err();
        assert!(e.message.contains("nested deeper than"), "{e}");
    }
    // A chain of operators counts one level per operator; 40 are fine, 60 are too deep.
    let chain = |n: usize| format!("SELECT 1{} AS x FROM \"t\"", " + 1".repeat(n));
    assert_eq!(run(&chain(40), json!({})), [json!({"x": 41})]);
    assert!(Rule::compile(&chain(60)).is_err());
    assert!(
        Rule::compile(&chain(100_000)).is_err(),
        "refused while parsing"
    );
    // Comments and case-insensitive keywords.
    let sql = "select a -- the a\n from \"t\" -- done";
    assert_eq!(run(sql, json!({"a": 1})), [json!({"a": 1})]);
}

// ---- print → parse round trip

fn lit() -> impl Strategy<Value = ast::Lit> {
    use ast::Lit;
    prop_oneof![
        Just(Lit::Null),
        any::<bool>().prop_map(Lit::Bool),
        (0i64..1_000_000).prop_map(Lit::Int),
        (0u32..10_000).prop_map(|n| Lit::Float(f64::from(n) / 8.0 + 0.5)),
        "[ -~]{0,6}".prop_map(Lit::Str),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("payload".to_string()),
        Just("select".to_string()),
        "[a-z_][a-z0-9_]{0,5}",
        "[ -~]{1,4}"
    ]
}

fn expr() -> impl Strategy<Value = ast::Expr> {
    use ast::{BinOp, Expr, Seg};
    let leaf = prop_oneof![
        lit().prop_map(Expr::Lit),
        (
            name(),
            proptest::collection::vec("[ -~]{0,4}".prop_map(Seg::Key), 0..3)
        )
            .prop_map(|(n, s)| Expr::Path(n, s)),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let ops = [
            BinOp::Or,
            BinOp::And,
            BinOp::Eq,
            BinOp::Ne,
            BinOp::Lt,
            BinOp::Gt,
            BinOp::Le,
            BinOp::Ge,
            BinOp::Match,
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::IntDiv,
            BinOp::Mod,
        ];
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
            (
                proptest::sample::select(ops.to_vec()),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, a, b)| Expr::Binary(op, Box::new(a), Box::new(b))),
            (
                inner.clone(),
                proptest::collection::vec(inner.clone(), 1..3),
                any::<bool>()
            )
                .prop_map(|(e, list, negated)| Expr::In {
                    expr: Box::new(e),
                    list,
                    negated
                }),
            (
                proptest::sample::select(vec!["lower", "concat", "nth", "coalesce"]),
                proptest::collection::vec(inner.clone(), 0..3)
            )
                .prop_map(|(n, args)| Expr::Call {
                    name: n.to_string(),
                    args,
                    at: 0
                }),
            (
                proptest::option::of(inner.clone()),
                proptest::collection::vec((inner.clone(), inner.clone()), 1..3),
                proptest::option::of(inner.clone())
            )
                .prop_map(|(o, whens, e)| Expr::Case {
                    operand: o.map(Box::new),
                    whens,
                    otherwise: e.map(Box::new)
                }),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Expr::Array),
            (name(), inner).prop_map(|(n, i)| Expr::Path(n, vec![Seg::Index(Box::new(i))])),
        ]
    })
}

/// Call offsets are not part of what is printed: compare without them.
fn without_offsets(s: &mut Statement) {
    fn fix(e: &mut ast::Expr) {
        use ast::Expr;
        match e {
            Expr::Call { at, args, .. } => {
                *at = 0;
                args.iter_mut().for_each(fix);
            }
            Expr::Not(x) | Expr::Neg(x) => fix(x),
            Expr::Binary(_, a, b) => {
                fix(a);
                fix(b);
            }
            Expr::In { expr, list, .. } => {
                fix(expr);
                list.iter_mut().for_each(fix);
            }
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => {
                operand.iter_mut().for_each(|x| fix(x));
                whens.iter_mut().for_each(|(c, t)| {
                    fix(c);
                    fix(t);
                });
                otherwise.iter_mut().for_each(|x| fix(x));
            }
            Expr::Array(items) => items.iter_mut().for_each(fix),
            Expr::Path(_, segs) => segs.iter_mut().for_each(|s| {
                if let ast::Seg::Index(i) = s {
                    fix(i);
                }
            }),
            Expr::Lit(_) => {}
        }
    }
    if let Statement::Select(sel) = s {
        for f in &mut sel.fields {
            if let ast::Field::Expr { expr, .. } = f {
                fix(expr);
            }
        }
        sel.filter.iter_mut().for_each(fix);
    }
}

proptest! {
    #[test]
    fn printed_statements_parse_back(
        fields in proptest::collection::vec((expr(), proptest::option::of(name())), 1..3),
        from in proptest::collection::vec("[ -~]{1,8}", 1..3),
        filter in proptest::option::of(expr()),
    ) {
        let statement = Statement::Select(ast::Select {
            fields: fields.into_iter().map(|(expr, alias)| ast::Field::Expr { expr, alias }).collect(),
            from,
            filter,
        });
        let sql = statement.to_string();
        let mut parsed = parser::parse(&sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        without_offsets(&mut parsed);
        prop_assert_eq!(parsed, statement, "{}", sql);
    }

    #[test]
    fn arbitrary_text_never_panics(sql in "\\PC{0,120}") {
        if let Ok(rule) = Rule::compile(&sql) {
            let _ = rule.apply(&Map::new());
        }
    }
}

#[test]
fn a_rule_knows_the_fields_it_reads() {
    let r =
        Rule::compile(r#"SELECT payload.a AS a, upper(clientid) FROM "t" WHERE qos > 0"#).unwrap();
    assert!(r.reads("payload") && r.reads("clientid") && r.reads("qos"));
    assert!(!r.reads("username") && !r.reads("peerhost"));
    let all = Rule::compile(r#"SELECT * FROM "t""#).unwrap();
    assert!(all.reads("username"));
}
