//! `soak [--minutes N] [--seed S]`: random faults against real brokers while
//! publishers keep sending, then the checker's report. Exit 1 if anything was lost or
//! reordered. Run it through `cargo xtask soak`.
use std::time::Duration;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} needs a number"))
            })
    };
    let minutes = arg("--minutes").unwrap_or(10);
    let seed = arg("--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.with_file_name("gateway-under-test");
    assert!(
        bin.exists(),
        "{} missing: build with cargo build -p mkg-e2e --bins",
        bin.display()
    );
    eprintln!(
        "soak: {minutes} min, seed {seed}, gateway {}",
        bin.display()
    );
    let r = harness::soak::run(&bin, Duration::from_secs(minutes * 60), seed);
    println!("{r}");
    println!("seed: {seed}");
    if r.report.lost.is_empty() && r.report.out_of_order.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        println!(
            "lost (first 20): {:?}",
            &r.report.lost[..r.report.lost.len().min(20)]
        );
        println!(
            "out of order (first 20): {:?}",
            &r.report.out_of_order[..r.report.out_of_order.len().min(20)]
        );
        std::process::ExitCode::FAILURE
    }
}
