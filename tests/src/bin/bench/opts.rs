//! The bench's command line.

use std::path::PathBuf;

pub const HELP: &str = "\
The benchmark: every figure next to its ceiling, in one run, one table
(docs/BENCHMARKS.md). Run it as `cargo xtask bench [OPTIONS]`, which builds the
release gateway and the tools first.

  --quick                  smaller counts, for development (1-2 minutes)
  --ingest N               messages for 1, ceiling and gateway each [500000; quick 100000]
  --ingest-rounds R        rounds of 1 (ceiling and gateway, each going first in
                           every other round); the figure is the median round [5; 1]
  --e2e N                  messages for 3, gateway and naive each [1000000; 200000]
  --backlog N              backlog drained in 2 [1000000; 200000]
  --big-backlog N          backlog of 5 and 7 [10000000; 1000000]
  --lat-secs S             seconds of load per latency rate and repetition [30; 10]
  --lat-reps R             repetitions of the latency runs (gateway and naive pipeline,
                           at each rate) [3; 1]
  --big-secs S             seconds the gateway drains the big backlog (RSS) [15; 5]
  --publishers N           MQTT publishers [4]
  --inflight N             unacknowledged messages per publisher [1000]
  --size BYTES             payload size [256]
  --set TABLE:KEY=VALUE    a setting of every gateway the bench starts, e.g.
                           --set wal:sync_linger=2ms --set kafka.properties:linger.ms=20
  --mosquitto-autosave S   Mosquitto's autosave_interval [1800, Mosquitto's default]
  --sd-card MS[,MS...]     also run the SD-card profile (9) with each write's
                           fdatasync/fsync made MS milliseconds slower and the
                           gateway pinned to one core, e.g. --sd-card 2,10,20 [off]
  --drain-windows W[,W...] also drain the backlog of 2 again with each
                           forward.max_in_flight_bytes W (e.g. 4MiB,8MiB,16MiB,32MiB):
                           drain rate and peak RSS per window, the curve behind
                           the default [off]
  --dir DIR                work directory [a new one under /tmp]
  --keep                   keep the work directory (logs of every process)
  --results FILE           append the results as one JSON line to FILE

Exit code 1 if a phase fails or a message is missing in Kafka; the table marks a
missed target MISS (the exit code stays 0: a figure is a measurement, not a test).";

/// What to run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub ingest: u64,
    pub ingest_rounds: u64,
    pub e2e: u64,
    pub backlog: u64,
    pub big: u64,
    pub lat_secs: u64,
    pub lat_reps: u64,
    pub big_secs: u64,
    pub publishers: u32,
    pub inflight: u32,
    pub size: usize,
    /// (table, key, value as written on the command line).
    pub sets: Vec<(String, String, String)>,
    pub autosave: u32,
    /// Extra milliseconds per fsync of the SD-card profile's runs (empty: not run).
    pub sd_card: Vec<u64>,
    /// `forward.max_in_flight_bytes` values of the window curve (empty: not run).
    pub drain_windows: Vec<String>,
    pub dir: Option<PathBuf>,
    pub keep: bool,
    pub results: Option<PathBuf>,
}

impl Opts {
    /// Parse `args` (without the program name).
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let q = |default: u64, quick_value: u64| if quick { quick_value } else { default };
        let mut o = Opts {
            quick,
            ingest: q(500_000, 100_000),
            ingest_rounds: q(5, 1),
            e2e: q(1_000_000, 200_000),
            backlog: q(1_000_000, 200_000),
            big: q(10_000_000, 1_000_000),
            lat_secs: q(30, 10),
            lat_reps: q(3, 1),
            big_secs: q(15, 5),
            publishers: 4,
            inflight: 1000,
            size: 256,
            sets: Vec::new(),
            autosave: 1800,
            sd_card: Vec::new(),
            drain_windows: Vec::new(),
            dir: None,
            keep: false,
            results: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value (try --help)"))
            };
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.replace('_', "")
                    .parse()
                    .map_err(|_| format!("bad value for {flag}: {v:?}"))
            }
            match flag.as_str() {
                "--quick" => {}
                "--ingest" => o.ingest = num(flag, value()?)?,
                "--ingest-rounds" => o.ingest_rounds = num(flag, value()?)?,
                "--e2e" => o.e2e = num(flag, value()?)?,
                "--backlog" => o.backlog = num(flag, value()?)?,
                "--big-backlog" => o.big = num(flag, value()?)?,
                "--lat-secs" => o.lat_secs = num(flag, value()?)?,
                "--lat-reps" => o.lat_reps = num(flag, value()?)?,
                "--big-secs" => o.big_secs = num(flag, value()?)?,
                "--publishers" => o.publishers = num(flag, value()?)?,
                "--inflight" => o.inflight = num(flag, value()?)?,
                "--size" => o.size = num(flag, value()?)?,
                "--mosquitto-autosave" => o.autosave = num(flag, value()?)?,
                "--sd-card" => {
                    o.sd_card = value()?
                        .split(',')
                        .map(|ms| num::<u64>(flag, ms.trim().to_string()))
                        .collect::<Result<_, _>>()?;
                    if o.sd_card.iter().any(|&ms| ms == 0 || ms > 1000) {
                        return Err("--sd-card: each delay must be 1 to 1000 ms".into());
                    }
                }
                "--drain-windows" => {
                    o.drain_windows = value()?
                        .split(',')
                        .map(|w| w.trim().to_string())
                        .filter(|w| !w.is_empty())
                        .collect();
                }
                "--dir" => o.dir = Some(value()?.into()),
                "--keep" => o.keep = true,
                "--results" => o.results = Some(value()?.into()),
                "--set" => o.sets.push(parse_set(&value()?)?),
                other => return Err(format!("unknown argument {other} (try --help)")),
            }
        }
        if o.size < 64 {
            return Err(
                "--size must be at least 64 (the payload carries ids and a send time)".into(),
            );
        }
        if o.publishers == 0
            || o.lat_secs == 0
            || o.lat_reps == 0
            || o.ingest == 0
            || o.ingest_rounds == 0
            || o.e2e == 0
            || o.backlog == 0
        {
            return Err("counts, publishers and seconds must be > 0".into());
        }
        Ok(o)
    }
}

/// `TABLE:KEY=VALUE`.
fn parse_set(s: &str) -> Result<(String, String, String), String> {
    let bad = || format!("--set {s:?}: expected TABLE:KEY=VALUE, e.g. wal:sync_linger=2ms");
    let (table, rest) = s.split_once(':').ok_or_else(bad)?;
    let (key, value) = rest.split_once('=').ok_or_else(bad)?;
    if key.is_empty() {
        return Err(bad());
    }
    Ok((table.to_string(), key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quick_changes_the_defaults_and_flags_win() {
        let o = Opts::parse(&args(&["--quick", "--e2e", "50_000"])).unwrap();
        assert_eq!((o.ingest, o.e2e, o.big), (100_000, 50_000, 1_000_000));
        let o = Opts::parse(&args(&["--set", "kafka.properties:linger.ms=20"])).unwrap();
        assert_eq!(
            o.sets,
            vec![("kafka.properties".into(), "linger.ms".into(), "20".into())]
        );
        assert!(Opts::parse(&args(&["--set", "nokey"])).is_err());
        assert!(Opts::parse(&args(&["--bogus"])).is_err());
        let o = Opts::parse(&args(&["--sd-card", "2,10, 20"])).unwrap();
        assert_eq!(o.sd_card, vec![2, 10, 20]);
        assert!(Opts::parse(&args(&["--sd-card", "0"])).is_err());
        assert!(Opts::parse(&args(&["--sd-card", "x"])).is_err());
    }
}
