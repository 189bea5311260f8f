//! list-certs latency over 100,000 stored certificates, and in-process
//! issue and sign-csr throughput of the CA engine.
//!
//! Run with `cargo bench -p metacrypt-keyd --bench list_certs`. It works on
//! a scratch database in a temporary directory through the real barrier,
//! writer thread and engine. A few hundred leaves are issued and signed
//! through the engine; the rest of the 100,000 are copies of an issued
//! record with their own serial, profile, common name and expiry, stored
//! with their serial index rows as the engine stores a leaf. 1 % of them
//! are revoked through the engine.

use std::time::{Duration, Instant};

use metacrypt_keyd::barrier::{MountStore, WriteBatch};
use metacrypt_keyd::engine::ca::CaEngineFactory;
use metacrypt_keyd::engine::{
    Engine, EngineFactory, EngineRequest, EngineResponse, RequestContext,
};
use metacrypt_keyd::testing::TestBarrier;
use metacrypt_protocol::{
    CaMountConfig, CaRequest, CaResponse, CertFilter, CertRecord, CertState, IssueRequest,
    IssuerConstraints, MountConfig, Profile, SignCsrRequest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const STORED: usize = 100_000;
const WRITE_BATCH: usize = 1_000;
const ISSUES: usize = 400;
const THREADS: usize = 4;
const LIST_RUNS: usize = 30;
const SCAN_RUNS: usize = 3;

struct Bench {
    _dir: tempfile::TempDir,
    barrier: TestBarrier,
    store: MountStore,
    engine: Box<dyn Engine>,
}

impl Bench {
    fn call(&self, request: CaRequest) -> CaResponse {
        let context = RequestContext {
            caller: None,
            trace_id: "bench",
        };
        match self
            .engine
            .handle(&self.store, context, EngineRequest::Ca(request))
        {
            Ok(EngineResponse::Ca(response)) => response,
            Err(error) => panic!("engine request failed: {error}"),
        }
    }
}

fn issue_request(common_name: &str) -> CaRequest {
    CaRequest::Issue(IssueRequest {
        issuer: "web".to_owned(),
        profile: Profile::Server,
        common_name: common_name.to_owned(),
        dns_names: vec![common_name.to_owned()],
        ip_addresses: Vec::new(),
        ttl: Some("24h".to_owned()),
        key_algorithm: None,
        email_addresses: Vec::new(),
        uris: Vec::new(),
        key_usages: None,
        extended_key_usages: None,
    })
}

fn csr_pem(common_name: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("generate a CSR key");
    let mut params =
        rcgen::CertificateParams::new(vec![common_name.to_owned()]).expect("CSR parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .serialize_request(&key)
        .expect("sign the CSR")
        .pem()
        .expect("encode the CSR")
}

/// Runs `count` requests made by `request` on `threads` threads and returns
/// requests per second.
fn throughput(
    bench: &Bench,
    threads: usize,
    count: usize,
    request: &(dyn Fn(usize) -> CaRequest + Sync),
) -> f64 {
    let per_thread = count / threads;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                for index in 0..per_thread {
                    bench.call(request(thread * per_thread + index));
                }
            });
        }
    });
    (per_thread * threads) as f64 / start.elapsed().as_secs_f64()
}

/// A 64-bit mix (splitmix64), for serials spread like random ones without
/// a random number generator.
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Stores `STORED` leaves minus those already issued: 1 % peer, the rest
/// server or client; 0.1 % with a common name containing `rare`; expiry
/// spread over the next 400 days. Returns the serials of every 100th leaf,
/// which the caller revokes.
fn populate(bench: &Bench, template: &CertRecord, already: usize) -> Vec<String> {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let mut to_revoke = Vec::new();
    let mut batch = WriteBatch::new();
    for index in 0..STORED - already {
        let serial = format!(
            "{:016x}{:016x}",
            mix(index as u64) >> 1,
            mix(index as u64 ^ 0x5555_5555)
        );
        let profile = match index % 100 {
            0 => Profile::Peer,
            n if n % 2 == 0 => Profile::Server,
            _ => Profile::Client,
        };
        let common_name = if index % 1000 == 7 {
            format!("rare-{index}.example.net")
        } else {
            format!("host-{index}.example.com")
        };
        let not_after = now + time::Duration::hours(1 + (index % 9600) as i64);
        let mut record = template.clone();
        record.serial_number = serial.clone();
        record.profile = profile;
        record.dns_names = vec![common_name.clone()];
        record.common_name = common_name;
        record.not_after = not_after.format(&Rfc3339).unwrap();
        batch.put(
            &format!("certs/{serial}"),
            &serde_json::to_vec(&record).unwrap(),
        );
        batch.insert_cert_serial(
            "web",
            &serial,
            not_after.unix_timestamp(),
            Some(profile.as_str()),
        );
        batch.set_cert_common_name("web", &serial, &record.common_name);
        if index % 100 == 50 {
            to_revoke.push(serial);
        }
        if batch.len() >= 2 * WRITE_BATCH {
            bench
                .store
                .commit(std::mem::take(&mut batch))
                .expect("store records");
        }
    }
    bench.store.commit(batch).expect("store records");
    to_revoke
}

fn list(bench: &Bench, filter: &CertFilter, runs: usize) -> (usize, Duration, Duration) {
    let mut samples = Vec::with_capacity(runs);
    let mut count = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let response = bench.call(CaRequest::ListCertsFiltered {
            filter: filter.clone(),
            limit: Some(100),
            after: None,
        });
        samples.push(start.elapsed());
        let CaResponse::Certs(records) = response else {
            panic!("expected records");
        };
        count = records.len();
    }
    samples.sort();
    (
        count,
        samples[samples.len() / 2],
        samples[samples.len() - 1],
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let barrier = TestBarrier::open(&dir.path().join("keyd.db"));
    let store = barrier.mount_store("pki");
    let engine = CaEngineFactory
        .initialize(&store, &MountConfig::Ca(CaMountConfig::default()))
        .expect("create the mount");
    let bench = Bench {
        _dir: dir,
        barrier,
        store,
        engine,
    };
    bench.call(CaRequest::CreateIssuer {
        name: "web".to_owned(),
        key_algorithm: None,
        ttl: None,
        constraints: IssuerConstraints::default(),
    });

    println!("in-process CA engine, ecdsa-p256 leaves, every commit durable");
    println!("{:<36} {:>12}", "operation", "per second");
    let issue = |index: usize| issue_request(&format!("svc-{index}.example.com"));
    for threads in [1, THREADS] {
        let rate = throughput(&bench, threads, ISSUES, &issue);
        println!("{:<36} {rate:>12.0}", format!("issue, {threads} thread(s)"));
    }
    let csrs: Vec<String> = (0..ISSUES)
        .map(|index| csr_pem(&format!("csr-{index}.example.com")))
        .collect();
    let sign = |index: usize| {
        CaRequest::SignCsr(SignCsrRequest {
            issuer: "web".to_owned(),
            profile: Profile::Server,
            csr: csrs[index].clone(),
            ttl: Some("24h".to_owned()),
        })
    };
    for threads in [1, THREADS] {
        let rate = throughput(&bench, threads, ISSUES, &sign);
        println!(
            "{:<36} {rate:>12.0}",
            format!("sign-csr, {threads} thread(s)")
        );
    }

    let CaResponse::Certs(issued) = bench.call(CaRequest::ListCerts {
        issuer: None,
        limit: Some(1),
        after: None,
    }) else {
        panic!("expected records");
    };
    let template = issued.into_iter().next().expect("an issued record");
    let start = Instant::now();
    let to_revoke = populate(&bench, &template, 4 * ISSUES);
    let stored = start.elapsed();
    let start = Instant::now();
    for serial in &to_revoke {
        bench.call(CaRequest::Revoke {
            serial: serial.clone(),
            reason: None,
            issuer: None,
        });
    }
    println!(
        "\nstored {STORED} leaves in {:.1} s, revoked {} through the engine in {:.1} s",
        stored.as_secs_f64(),
        to_revoke.len(),
        start.elapsed().as_secs_f64()
    );

    let in_30_days = (OffsetDateTime::now_utc() + time::Duration::days(30))
        .format(&Rfc3339)
        .unwrap();
    let cases = [
        ("first page, no filter", CertFilter::default()),
        (
            "profile=peer (1 %)",
            CertFilter {
                profile: Some(Profile::Peer),
                ..CertFilter::default()
            },
        ),
        (
            "state=revoked (1 %)",
            CertFilter {
                state: Some(CertState::Revoked),
                ..CertFilter::default()
            },
        ),
        (
            "expiring_before now+30d (7.5 %)",
            CertFilter {
                expiring_before: Some(in_30_days),
                ..CertFilter::default()
            },
        ),
        (
            "common_name~rare (0.1 %)",
            CertFilter {
                common_name: Some("RARE".to_owned()),
                ..CertFilter::default()
            },
        ),
        (
            "profile=peer, common_name~rare",
            CertFilter {
                profile: Some(Profile::Peer),
                common_name: Some("rare".to_owned()),
                ..CertFilter::default()
            },
        ),
    ];
    println!(
        "\nlist-certs, limit 100, {LIST_RUNS} runs each, {STORED} leaves\n{:<36} {:>8} {:>12} {:>12}",
        "filter", "records", "median", "max"
    );
    for (name, filter) in &cases {
        let (count, median, max) = list(&bench, filter, LIST_RUNS);
        println!("{name:<36} {count:>8} {median:>12.2?} {max:>12.2?}");
    }

    // One row without profile and state makes list-certs read every
    // record, as it did before the index had those columns.
    bench
        .barrier
        .raw_connection()
        .execute(
            "UPDATE ca_cert_serials SET indexed = 0 \
             WHERE issuer = 'web' AND serial = (SELECT min(serial) FROM ca_cert_serials \
             WHERE issuer = 'web')",
            [],
        )
        .expect("mark a row unindexed");
    let (count, median, max) = list(
        &bench,
        &CertFilter {
            profile: Some(Profile::Peer),
            ..CertFilter::default()
        },
        SCAN_RUNS,
    );
    println!(
        "{:<36} {count:>8} {median:>12.2?} {max:>12.2?}",
        "profile=peer, full scan (no index)"
    );
}
