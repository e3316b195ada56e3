//! EVENT / EVENT_ACK codec tables and the pending-event log's cursor arithmetic.
use super::*;

fn ev(seq: u64) -> Event {
    Event { seq, id: format!("X.{seq}"), time_us: seq.wrapping_add(1_700_000_000_000_000), json: format!("{{\"event\":\"delivered\",\"n\":{seq}}}") }
}

#[test]
fn event_round_trips() {
    for e in [ev(1), ev(u64::MAX), Event::default(), Event { json: "é\u{1F600}".into(), ..ev(7) }] {
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    }
    for (name, seq) in [("events", 0u64), ("http://h/x", 1 << 40), ("é", u64::MAX)] {
        assert_eq!(decode_ack(&encode_ack(name, seq)).unwrap(), (name.to_string(), seq));
    }
}

#[test]
fn bad_metas_are_errors() {
    let good = encode_event(&ev(3));
    let table: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "meta truncated"),
        (vec![9], "unknown meta version 9"),
        (vec![1, 0], "unknown meta version 1"),
        (good[..good.len() - 1].to_vec(), "meta truncated"),
        ([good.clone(), vec![0]].concat(), "trailing bytes in meta"),
        (vec![META_VERSION, 1, 1, 0xff], "string not UTF-8"),
    ];
    for (b, want) in table {
        assert_eq!(decode_event(&b).unwrap_err().0, want, "{b:?}");
    }
    let ack = encode_ack("w", 5);
    assert_eq!(decode_ack(&ack[..ack.len() - 1]).unwrap_err().0, "meta truncated");
    assert_eq!(decode_ack(&[ack.clone(), vec![1]].concat()).unwrap_err().0, "trailing bytes in meta");
}

#[test]
fn cursors_floor_and_prune() {
    let mut log = EventLog::default();
    for s in 1..=10 {
        assert_eq!(log.insert(ev(s), 1 + s / 5, 100), None);
    }
    assert_eq!(log.floor(), 0);
    assert_eq!(log.backlog("a"), 10);
    log.ack("a", 4, 2);
    log.ack("b", 7, 2);
    log.ack("a", 3, 3); // a cursor never goes back
    assert_eq!(log.cursor("a"), 4);
    assert_eq!(log.floor(), 4);
    assert_eq!(log.prune().len(), 4);
    assert_eq!(log.after("a", 2).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
    assert_eq!(log.after("b", 100).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert_eq!((log.backlog("a"), log.backlog("b"), log.backlog("new")), (6, 3, 6));
    assert_eq!((log.seq_at("a", 1), log.seq_at("a", 6), log.seq_at("a", 7), log.seq_at("a", 0)), (Some(5), Some(10), None, None));
    // Only "b" is configured now: "a" no longer holds events back.
    log.set_names(vec!["b".into()]);
    assert_eq!(log.prune().len(), 3);
    assert_eq!(log.acks_in(2), vec![("b".to_string(), 7)]);
    // A configured name without a cursor holds everything.
    log.set_names(vec!["b".into(), "c".into()]);
    assert_eq!(log.floor(), 0);
    log.set_names(vec![]);
    assert_eq!(log.prune().len(), 3);
    assert!(log.is_empty());
    assert_eq!(log.max_seq, 10);
}

#[test]
fn a_copy_supersedes_and_an_old_seq_goes_in_order() {
    let mut log = EventLog::default();
    for s in [2, 3, 5] {
        log.insert(ev(s), 1, 10);
    }
    assert_eq!(log.insert(ev(3), 4, 11), Some((1, 10)));
    assert_eq!(log.insert(ev(1), 4, 12), None);
    assert_eq!(log.after("x", 10).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 5]);
    assert_eq!(log.in_segment(4).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn accepted_json_table() {
    use super::super::record::Recipient;
    let rc = |a: &str| Recipient { address: a.into(), ..Default::default() };
    let env = |sender: &str, rcpts: Vec<Recipient>| Envelope {
        queue_id: "Q1".into(),
        arrival_us: 1_500_999,
        sender: sender.into(),
        recipients: rcpts,
        client_ip: "192.0.2.1".into(),
        ..Default::default()
    };
    let head = "{\"event\":\"accepted\",\"time\":\"1970-01-01T00:00:01.500Z\",\"queue_id\":\"Q1\",";
    for (e, size, rest) in [
        (env("", vec![]), 0, "\"sender\":\"\",\"recipients\":[],\"size\":0,\"client_ip\":\"192.0.2.1\"}"),
        (env("a@b", vec![rc("c@d"), rc("é\"\\\n\u{1}")]), 1834,
         "\"sender\":\"a@b\",\"recipients\":[\"c@d\",\"é\\\"\\\\\\n\\u0001\"],\"size\":1834,\"client_ip\":\"192.0.2.1\"}"),
    ] {
        assert_eq!(accepted_json(&e, size), format!("{head}{rest}"));
    }
}

#[test]
fn bodies_splice_ids_and_filter_kinds() {
    let mk = |seq: u64, kind: &str| Event { seq, id: format!("X.{seq}"), json: format!("{{\"event\":\"{kind}\",\"n\":{seq}}}"), ..Default::default() };
    let evs = [mk(1, "delivered"), mk(2, "bounced"), mk(3, "delivered")];
    assert_eq!(body(&evs, None), (b"[{\"id\":\"X.1\",\"event\":\"delivered\",\"n\":1},{\"id\":\"X.2\",\"event\":\"bounced\",\"n\":2},{\"id\":\"X.3\",\"event\":\"delivered\",\"n\":3}]".to_vec(), 3));
    assert_eq!(body(&evs, Some(&["bounced".to_string()])), (b"[{\"id\":\"X.2\",\"event\":\"bounced\",\"n\":2}]".to_vec(), 1));
    assert_eq!(body(&evs, Some(&[])), (b"[]".to_vec(), 0));
    assert_eq!(body(&[], None), (b"[]".to_vec(), 0));
    assert_eq!((kind_of("{\"event\":\"accepted\",\"x\":1}"), kind_of("{}"), kind_of("")), ("accepted", "", ""));

    let mut log = EventLog::default();
    for (i, e) in evs.iter().enumerate() {
        log.insert(e.clone(), 1, 10 + i as u64);
    }
    assert_eq!(log.body_after("w", 0, None), (b"[]".to_vec(), 0, 0, 0, 0));
    log.ack("w", 1, 1);
    let (b, first, last, taken, n) = log.body_after("w", 100, Some(&["delivered".to_string()]));
    assert_eq!((first, last, taken, n), (2, 3, 2, 1));
    assert_eq!(b, b"[{\"id\":\"X.3\",\"event\":\"delivered\",\"n\":3}]".to_vec());
    assert_eq!(log.body_after("w", 1, None).1..=log.body_after("w", 1, None).2, 2..=2);
    log.ack("w", 3, 1);
    assert_eq!(log.body_after("w", 100, None), (b"[]".to_vec(), 0, 0, 0, 0));
}

#[test]
fn delivered_events_from_log_lines() {
    let text = "{\"time\":\"T\",\"queue_id\":\"Q\"}\n{\"time\":\"U\"}\n";
    assert_eq!(delivered_from_log(text), vec![
        "{\"event\":\"delivered\",\"time\":\"T\",\"queue_id\":\"Q\"}".to_string(),
        "{\"event\":\"delivered\",\"time\":\"U\"}".to_string(),
    ]);
    assert!(delivered_from_log("").is_empty() && delivered_from_log("\n\nnot json\n").is_empty());
}
