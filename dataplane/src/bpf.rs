//! The eBPF object: loading it, running its programs through BPF_PROG_TEST_RUN, reading its maps.

use std::time::Duration;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapError, PerCpuArray, PerCpuValues},
    programs::{
        CgroupSockAddr, ProgramError, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions,
        TestRunResult, Xdp,
    },
};
use shoal_abi::bench::{self, TxFrame};
use shoal_abi::parse::{self, ParseStats};

/// The object built from `ebpf/programs` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal.bpf.o"));

/// What can go wrong loading or driving the programs.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The object could not be loaded (maps created, relocations applied).
    #[error("loading the eBPF object: {0}")]
    Object(#[source] Box<EbpfError>),
    /// The object has no program by that name.
    #[error("the eBPF object has no program {0:?}")]
    NoProgram(&'static str),
    /// The object has no map by that name.
    #[error("the eBPF object has no map {0:?}")]
    NoMap(&'static str),
    /// Loading (verifying) or running a program failed.
    #[error("eBPF program {name:?}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Reading or writing a map failed.
    #[error("eBPF map {name:?}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<MapError>,
    },
}

/// An XDP verdict (`enum xdp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpVerdict {
    /// `XDP_ABORTED`: a program error; the packet is dropped and a tracepoint fires.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`: on to the kernel's stack.
    Pass,
    /// `XDP_TX`: back out of the interface it came in on.
    Tx,
    /// `XDP_REDIRECT`: to another interface, CPU or socket.
    Redirect,
    /// Anything else the program returned (the kernel treats it as `XDP_ABORTED`).
    Other(u32),
}

impl From<u32> for XdpVerdict {
    fn from(code: u32) -> Self {
        match code {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

/// The result of running an XDP program on one packet with BPF_PROG_TEST_RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpRun {
    /// What the program returned.
    pub verdict: XdpVerdict,
    /// The packet as the program left it.
    pub output: Vec<u8>,
    /// The kernel's average time per run (meaningful with many repeats).
    pub per_run: Duration,
}

/// BPF_PROG_TEST_RUN of program `name` (run by `run`) on `packet`, `repeat` times (at least
/// once): the kernel's result and the packet as the program left it.
fn run_once(
    name: &'static str,
    packet: &[u8],
    repeat: u32,
    run: impl FnOnce(TestRunOptions<'_>) -> Result<TestRunResult, ProgramError>,
) -> Result<(TestRunResult, Vec<u8>), BpfError> {
    // A program may grow a packet by its tailroom; leave room for what the kernel hands back.
    let mut output = vec![0_u8; packet.len() + 4096];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut output);
    opts.repeat = repeat.max(1);
    let result = run(opts).map_err(|source| BpfError::Program {
        name,
        source: Box::new(source),
    })?;
    output.truncate(result.data_size_out as usize);
    Ok((result, output))
}

/// The loaded object: its maps exist in the kernel; each program is verified and loaded on first
/// use. Dropping it unloads everything it loaded (nothing is pinned).
#[derive(Debug)]
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads [`OBJECT`]: creates its maps. Needs `CAP_BPF` (root).
    pub fn load() -> Result<Self, BpfError> {
        let ebpf = Ebpf::load(OBJECT).map_err(|e| BpfError::Object(Box::new(e)))?;
        Ok(Self { ebpf })
    }

    /// [`Programs::load`], with the routing mesh's per-service counters compiled out by the
    /// verifier (`shoal_abi::mesh::COUNTERS_GLOBAL` set to 0): only for measuring what the
    /// counters cost (`cargo xtask bench metrics`).
    pub fn load_without_counters() -> Result<Self, BpfError> {
        let ebpf = EbpfLoader::new()
            .override_global(shoal_abi::mesh::COUNTERS_GLOBAL, &0_u32, true)
            .load(OBJECT)
            .map_err(|e| BpfError::Object(Box::new(e)))?;
        Ok(Self { ebpf })
    }

    /// The XDP program `name`, verified and loaded into the kernel.
    pub fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, BpfError> {
        self.loaded(name, Xdp::load, |p: &Xdp| p.fd().is_ok())
    }

    /// The TC classifier `name`, verified and loaded into the kernel.
    pub fn tc(&mut self, name: &'static str) -> Result<&mut SchedClassifier, BpfError> {
        self.loaded(name, SchedClassifier::load, |p: &SchedClassifier| {
            p.fd().is_ok()
        })
    }

    /// The cgroup socket-address program `name`, verified and loaded into the kernel.
    pub fn sock_addr(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, BpfError> {
        self.loaded(name, CgroupSockAddr::load, |p: &CgroupSockAddr| {
            p.fd().is_ok()
        })
    }

    /// Program `name` as a `P`, loaded on first use.
    fn loaded<'a, P: 'a>(
        &'a mut self,
        name: &'static str,
        load: fn(&mut P) -> Result<(), ProgramError>,
        is_loaded: fn(&P) -> bool,
    ) -> Result<&'a mut P, BpfError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program_error = |source| BpfError::Program {
            name,
            source: Box::new(source),
        };
        let program: &mut P = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::NoProgram(name))?
            .try_into()
            .map_err(program_error)?;
        if !is_loaded(program) {
            load(program).map_err(program_error)?;
        }
        Ok(program)
    }

    /// The loaded object, for map access.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, for map updates.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs the XDP program `name` on `packet` `repeat` times (at least once) with
    /// BPF_PROG_TEST_RUN and returns the last run's verdict and output packet.
    pub fn test_run(
        &mut self,
        name: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<XdpRun, BpfError> {
        let xdp: &Xdp = self.xdp(name)?;
        let (result, output) = run_once(name, packet, repeat, |opts| xdp.test_run(opts))?;
        Ok(XdpRun {
            verdict: result.return_value.into(),
            output,
            per_run: result.duration,
        })
    }

    /// Runs the TC classifier `name` on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN and
    /// returns its return code (`TC_ACT_*`) and the packet as it left it.
    pub fn tc_test_run(
        &mut self,
        name: &'static str,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), BpfError> {
        let tc: &SchedClassifier = self.tc(name)?;
        let (result, output) = run_once(name, packet, 1, |opts| tc.test_run(opts))?;
        Ok((result.return_value as i32, output))
    }

    /// Sends `packet` `repeat` times out of interface `ifindex` (of the calling thread's network
    /// namespace) through the XDP program `name` in BPF_PROG_TEST_RUN's live-frames mode: the
    /// program runs as if each copy had arrived on that interface, and what it transmits or
    /// redirects is really sent, in batches of `batch` (the kernel's packet generator, as
    /// xdp-trafficgen uses it). Returns when all are sent.
    pub fn send_live(
        &mut self,
        name: &'static str,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<(), BpfError> {
        let xdp: &Xdp = self.xdp(name)?;
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (the kernel wants data_end to be the packet's length, the rest zero).
        let ctx: Vec<u8> = [0, packet.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|word| word.to_ne_bytes())
            .collect();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        opts.attrs = TestRunAttrs::new().xdp_live_frames(batch);
        xdp.test_run(opts).map_err(|source| BpfError::Program {
            name,
            source: Box::new(source),
        })?;
        Ok(())
    }

    /// The packet parser's counters, summed over all CPUs.
    pub fn parse_stats(&self) -> Result<ParseStats, BpfError> {
        let mut total = ParseStats::default();
        for cpu in self.per_cpu::<ParseStats>(parse::STATS_MAP)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// The frame the benchmark generator ([`shoal_abi::programs::XDP_BENCH_TX`]) sends, and over how many
    /// flows it rotates its source port.
    pub fn set_bench_frame(&mut self, frame: &TxFrame) -> Result<(), BpfError> {
        let name = bench::TX_FRAME_MAP;
        let map_error = |source| BpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map_mut(name).ok_or(BpfError::NoMap(name))?;
        let mut array: Array<_, TxFrame> = Array::try_from(map).map_err(map_error)?;
        array.set(0, *frame, 0).map_err(map_error)
    }

    /// The packets the benchmark sink ([`shoal_abi::programs::XDP_BENCH_SINK`]) counted, over all CPUs.
    pub fn bench_sink_packets(&self) -> Result<u64, BpfError> {
        Ok(self.per_cpu::<u64>(bench::SINK_MAP)?.iter().sum())
    }

    /// Index 0 of the per-CPU array `name`, one value per CPU.
    fn per_cpu<T: aya::Pod>(&self, name: &'static str) -> Result<PerCpuValues<T>, BpfError> {
        let map_error = |source| BpfError::Map {
            name,
            source: Box::new(source),
        };
        let map = self.ebpf.map(name).ok_or(BpfError::NoMap(name))?;
        let array: PerCpuArray<_, T> = PerCpuArray::try_from(map).map_err(map_error)?;
        array.get(&0, 0).map_err(map_error)
    }
}
