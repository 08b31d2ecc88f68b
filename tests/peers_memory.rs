//! The oversized-payload path of the peer ingress, measured: a body
//! declared larger than a message is refused before it is read, and one
//! streamed without a length is read no further than the largest message,
//! so neither costs the ingress more than about that much memory. Alone in
//! its binary: the allocator's count is the process's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::peers::TestIngress;
use common::sidecar::ControlPlane;
use wopr_operator::p2p::MAX_MESSAGE_BYTES;

/// Counts the bytes allocated now and the most ever at once.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: as the system allocator's own contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as the system allocator's own contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `work` above what was allocated before.
async fn peak_of(work: impl std::future::Future<Output = ()>) -> usize {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    work.await;
    PEAK.load(Ordering::Relaxed).saturating_sub(before)
}

#[tokio::test]
async fn an_oversized_message_costs_at_most_about_the_largest_message() {
    let _ = wopr_operator::tls::server::provider().install_default();
    let control_plane = ControlPlane::start(&[]).await;
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;
    let ca = std::fs::read(&common::tls::pki().ca_file).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    const SENT: usize = 64 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;

    // 64 MiB streamed without a length, in 64 KiB chunks made as sent.
    let streamed = peak_of(async {
        let chunks = futures::stream::iter(
            (0..SENT / CHUNK).map(|_| Ok::<_, std::io::Error>(vec![b' '; CHUNK])),
        );
        let answer = client
            .post(ingress.messages_url())
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        // The ingress answers 413 and closes; the client may see either.
        if let Ok(answer) = answer {
            assert_eq!(answer.status(), 413);
        }
    })
    .await;
    // The message's limit, once for the body read and once for slack (TLS
    // and HTTP buffers, the client's own chunks in flight): never 64 MiB.
    let bound = 2 * MAX_MESSAGE_BYTES + 4 * 1024 * 1024;
    assert!(
        streamed < bound,
        "streaming 64 MiB peaked at {streamed} bytes (bound {bound})"
    );
    println!(
        "oversized streamed body: peak {streamed} bytes allocated (limit {MAX_MESSAGE_BYTES})"
    );
}
