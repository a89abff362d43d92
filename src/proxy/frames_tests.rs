use super::*;

fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [9, 8, 7, 6];
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[test]
fn a_closing_direction_stops_at_the_next_boundary_and_writes_a_masked_close() {
    let closing = Closing::default();
    let counters = WsCounters::default();
    let f = Framing::new(WsDir::FromClient, &closing, &counters);
    let a = client_frame(0x82, b"first");
    let b = client_frame(0x82, b"second");
    // Half of `a` passes before the closing starts.
    assert_eq!(f.scan(&a[..4]), (4, Then::Go));
    assert!(!f.must_close());
    closing.start(Cause::Ended(Ending::Shutdown));
    let mut rest = a[4..].to_vec();
    rest.extend_from_slice(&b);
    // The rest of `a` passes; `b` does not.
    assert_eq!(f.scan(&rest), (a.len() - 4, Then::Close));
    assert!(f.must_close());
    let (frame, len) = f.close_frame().unwrap();
    assert_eq!(len, 8);
    assert_eq!(frame[..2], [0x88, 0x82]);
    let code = u16::from_be_bytes([frame[6] ^ frame[2], frame[7] ^ frame[3]]);
    assert_eq!(code, 1001);
    // The client's own Close (its reply) ends the wait.
    assert!(!f.discard(&b));
    assert!(f.discard(&client_frame(0x88, &1001u16.to_be_bytes())));
}

#[test]
fn malformed_framing_starts_closing_with_1002_to_the_client() {
    let closing = Closing::default();
    let counters = WsCounters::default();
    let up = Framing::new(WsDir::FromClient, &closing, &counters);
    let down = Framing::new(WsDir::FromBackend, &closing, &counters);
    let mut data = client_frame(0x82, b"ok");
    let good = data.len();
    data.extend(client_frame(0x8B, b"?")); // reserved opcode
    assert_eq!(up.probe(&data), good, "probe sees the same");
    assert!(!closing.started(), "probe changes nothing");
    assert_eq!(up.scan(&data), (good, Then::Malformed));
    assert_eq!(closing.cause(), Some(Cause::Malformed { client: true }));
    assert!(
        up.must_close() && up.replied(),
        "nothing to wait for from a desync"
    );
    // The backend gets 1001 (it did nothing wrong), the client 1002, unmasked.
    let (f, n) = up.close_frame().unwrap();
    assert_eq!(u16::from_be_bytes([f[6] ^ f[2], f[7] ^ f[3]]), 1001);
    assert_eq!(n, 8);
    assert!(down.must_close(), "the other direction is between frames");
    let (f, n) = down.close_frame().unwrap();
    assert_eq!(&f[..n], &[0x88, 0x02, 0x03, 0xEA]);
}

#[test]
fn the_clients_pong_to_our_ping_is_found_only_while_a_ping_is_out() {
    let closing = Closing::default();
    let counters = WsCounters::default();
    let up = Framing::new(WsDir::FromClient, &closing, &counters);
    let down = Framing::new(WsDir::FromBackend, &closing, &counters);
    let data = client_frame(0x82, b"data");
    let ours = client_frame(0x8A, b"rwpg");
    let theirs = client_frame(0x8A, b"abcd");
    let mut batch = data.clone();
    batch.extend(&ours);
    batch.extend(&data);
    assert_eq!(up.find_pong(&batch), None, "no ping out");
    closing.request_ping();
    assert!(down.ping_now());
    down.ping_sent();
    assert!(!down.ping_now());
    assert_eq!(
        up.find_pong(&batch),
        Some((data.len(), data.len() + ours.len()))
    );
    assert_eq!(up.find_pong(&theirs), None, "the client's own Pong passes");
    let heard = closing.heard();
    up.pong_taken();
    assert_ne!(closing.heard(), heard);
    assert_eq!(up.find_pong(&batch), None, "answered");
}

#[test]
fn no_close_is_written_after_the_source_already_sent_its_own() {
    let closing = Closing::default();
    let counters = WsCounters::default();
    let f = Framing::new(WsDir::FromClient, &closing, &counters);
    let close = client_frame(0x88, &1000u16.to_be_bytes());
    assert_eq!(f.scan(&close), (close.len(), Then::Go));
    closing.start(Cause::Ended(Ending::IdleTimeout));
    assert!(f.close_frame().is_none());
    assert!(f.replied());
}

/// What frame tracking adds to every WebSocket tunnel: two of these and one `Closing`
/// (docs/architecture.md). A regression here is memory per idle connection.
#[test]
fn per_tunnel_state_stays_small() {
    let (f, c) = (size_of::<Framing<'_>>(), size_of::<Closing>());
    eprintln!("Framing {f} B, Closing {c} B");
    assert!(2 * f + c <= 512, "Framing {f} B, Closing {c} B");
}
