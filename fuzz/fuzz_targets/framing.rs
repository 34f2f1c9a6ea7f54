//! The HTTP/1 framing guard on arbitrary client bytes, split at arbitrary points: what hyper
//! reads does not depend on how the bytes arrived; it is the input itself, or the input up to
//! an LF followed by the poison (a complete, refused head); and a bare LF in the first head
//! never reaches hyper.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenproxy::server::framing::{read_through, POISON};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Where the first head ends: after its empty line, or the end of the input.
fn first_head_end(input: &[u8]) -> usize {
    if input.starts_with(b"\r\n") {
        return 2;
    }
    input
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(input.len(), |at| at + 4)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = read_through([input]);
    let bytewise = read_through(input.chunks(1));
    let stepped = read_through(input.chunks(usize::from(step % 32) + 1));
    assert_eq!(
        whole, bytewise,
        "the result depends on how the bytes were split"
    );
    assert_eq!(
        whole, stepped,
        "the result depends on how the bytes were split"
    );

    let cut = if whole == input {
        None
    } else {
        let kept = whole
            .strip_suffix(POISON)
            .expect("changed output ends with the poison");
        assert!(input.starts_with(kept), "bytes before the cut were changed");
        assert_eq!(
            input.get(kept.len()),
            Some(&b'\n'),
            "cut anywhere but at an LF"
        );
        Some(kept.len())
    };

    if !input.starts_with(H2_PREFACE) {
        let end = first_head_end(input);
        let bare_lf =
            (0..end).find(|&at| input[at] == b'\n' && (at == 0 || input[at - 1] != b'\r'));
        if let Some(bare_lf) = bare_lf {
            assert!(
                cut.is_some_and(|cut| cut <= bare_lf),
                "a bare LF at {bare_lf} in the first head reached hyper"
            );
        }
    }
});
