//! Loop detectors read over Modbus: a relay contact wired into a DI module, or a module
//! that counts passes in a register (see `devices.md` §5).
//!
//! ## Pieces
//!
//! - [`EdgeDetector`] and [`is_closed`]: turn sampled contact levels into passes (counted on
//!   the release edge, closures shorter than the minimum hold are chatter).
//! - [`counter_delta`]: the pass count between two counter readings, with wrap-around and
//!   module reboots. The gateway uses it; the driver only reports raw readings.
//! - [`ModbusBus`]: one Modbus connection (an RS485 port or a TCP host) shared by every
//!   configured loop on it. It implements [`crate::Driver`].
//! - [`BusPoller`]: the transport-independent core of a bus. Its
//!   [`BusPoller::poll_cycle`] is generic over any [`tokio_modbus::client::Client`] (the
//!   tokio-modbus `Context` from `rtu::attach_slave` or `tcp::connect_slave`, or any
//!   test double), and [`BusPoller::flush`] hands the resulting events to the gateway.
//!
//! ## One request in flight
//!
//! A bus polls its points in cycles. Points with the same slave and register type whose
//! addresses lie within [`GROUP_SPAN`] of each other are read with one request over the
//! covering range. Every request runs under the bus timeout (the tokio-modbus client has
//! none of its own). A timeout or an I/O error drops the connection (it is reopened with a
//! back-off from 0.5 s doubling to 10 s); a Modbus exception or a malformed reply is a bad
//! input for the points it covers and leaves the bus up.
//!
//! Requests are made with [`tokio_modbus::client::Client::call`] rather than the `Reader`
//! helpers, because those `debug_assert!` on the reply length, and a device that answers
//! with too few values must be a bad input, not a panic.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::outage::{Backoff, Outage};
use crate::{
    should_log, CancellationToken, Direction, Driver, DriverError, DriverFuture, DriverStatus,
    Event, EventSink, SinkError,
};

pub mod config;

/// Points of one slave and register type within this many addresses of the first one are
/// read with a single request.
pub const GROUP_SPAN: u16 = 16;

/// The first reconnect delay after a failure.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// The longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Opening a TCP connection (name lookup included) may take at least this long.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that can go wrong on a loop bus.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A setting that can never work (reported as a fatal driver error).
    #[error("bad setting: {0}")]
    Config(String),
    /// A register type name that is not one of the four Modbus tables.
    #[error("unknown register type {0:?} (expected discrete_input, coil, input_register or holding_register)")]
    UnknownRegister(String),
    /// The device did not answer within the bus timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (port gone, TCP reset, undecodable bytes).
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// The serial port could not be opened.
    #[error("cannot open serial port {port}: {source}")]
    Serial {
        /// The configured port path.
        port: String,
        /// What the serial layer said.
        source: tokio_serial::Error,
    },
    /// The TCP `host:port` did not resolve to any address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The gateway is shutting down: the sink is closed.
    #[error("the gateway is shutting down")]
    SinkClosed,
}

// ---------------------------------------------------------------------------------------
// Pure logic
// ---------------------------------------------------------------------------------------

/// Whether a contact is closed, given the raw input level and the module's polarity.
///
/// On an active-low module (`active_low = true`) a low input (`raw = false`) is a closed
/// contact.
pub fn is_closed(raw: bool, active_low: bool) -> bool {
    raw != active_low
}

/// Turns sampled contact states into passes: a pass is counted when the contact opens after
/// having been closed for at least `min_hold`. Shorter closures are chatter.
#[derive(Debug, Clone)]
pub struct EdgeDetector {
    min_hold: Duration,
    /// The last sampled state; `None` before the first sample.
    last: Option<bool>,
    /// When the current closure was first seen.
    closed_since: Option<Instant>,
}

impl EdgeDetector {
    /// A detector that counts closures held for at least `min_hold`.
    pub fn new(min_hold: Duration) -> EdgeDetector {
        EdgeDetector {
            min_hold,
            last: None,
            closed_since: None,
        }
    }

    /// Feed one sample (`closed` after polarity, see [`is_closed`]) taken at `now`.
    /// Returns true exactly when a pass must be counted (on the release edge).
    ///
    /// The first sample only sets the state: a loop already closed then counts when it
    /// releases, if it was held for `min_hold` since that first sample.
    pub fn update(&mut self, closed: bool, now: Instant) -> bool {
        let previous = self.last.replace(closed);
        match (previous, closed) {
            (None | Some(false), true) => {
                self.closed_since = Some(now);
                false
            }
            (Some(true), false) => self
                .closed_since
                .take()
                .is_some_and(|since| now.saturating_duration_since(since) >= self.min_hold),
            (None | Some(false), false) | (Some(true), true) => false,
        }
    }
}

/// What one new counter reading means, relative to the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterStep {
    /// No earlier reading: this one is the baseline and counts nothing.
    Baseline,
    /// The counter grew by this much.
    Normal(u64),
    /// The counter wrapped around its width; this many passes in total.
    Wrap(u64),
    /// The module restarted from zero and has counted this many since.
    Reset(u64),
}

impl CounterStep {
    /// How many passes this step stands for.
    pub fn passes(&self) -> u64 {
        match *self {
            CounterStep::Baseline => 0,
            CounterStep::Normal(n) | CounterStep::Wrap(n) | CounterStep::Reset(n) => n,
        }
    }
}

/// Classify the counter reading `now` after the reading `last`, for a counter `bits` wide
/// (values are masked to that width; `bits` is clamped to `1..=64`).
///
/// A smaller reading is a wrap-around when the distance forward through the wrap is less
/// than half the range, and otherwise a module reboot (which then counted `now` passes).
pub fn counter_delta(last: Option<u64>, now: u64, bits: u8) -> CounterStep {
    let bits = bits.clamp(1, 64);
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let now = now & mask;
    let Some(last) = last else {
        return CounterStep::Baseline;
    };
    let last = last & mask;
    if now >= last {
        return CounterStep::Normal(now - last);
    }
    // 2^bits - last + now, written so it cannot overflow: last > now, so
    // (mask - last) + now + 1 <= mask.
    let distance = (mask - last) + now + 1;
    let half = (mask >> 1) + 1;
    if distance < half {
        CounterStep::Wrap(distance)
    } else {
        CounterStep::Reset(now)
    }
}

// ---------------------------------------------------------------------------------------
// Configuration types
// ---------------------------------------------------------------------------------------

/// The Modbus table a loop is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Register {
    /// Discrete inputs, function 0x02.
    DiscreteInput,
    /// Coils, function 0x01.
    Coil,
    /// Input registers, function 0x04.
    InputRegister,
    /// Holding registers, function 0x03.
    HoldingRegister,
}

impl Register {
    /// Parse the configuration spelling: `discrete_input`, `coil`, `input_register` or
    /// `holding_register`.
    pub fn parse(s: &str) -> Result<Register, LoopError> {
        match s.trim() {
            "discrete_input" => Ok(Register::DiscreteInput),
            "coil" => Ok(Register::Coil),
            "input_register" => Ok(Register::InputRegister),
            "holding_register" => Ok(Register::HoldingRegister),
            other => Err(LoopError::UnknownRegister(other.chars().take(40).collect())),
        }
    }

    /// True for the one-bit tables (discrete inputs and coils).
    pub fn is_bit(self) -> bool {
        matches!(self, Register::DiscreteInput | Register::Coil)
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Register::DiscreteInput => "discrete_input",
            Register::Coil => "coil",
            Register::InputRegister => "input_register",
            Register::HoldingRegister => "holding_register",
        }
    }

    fn request(self, start: u16, count: u16) -> Request<'static> {
        match self {
            Register::DiscreteInput => Request::ReadDiscreteInputs(start, count),
            Register::Coil => Request::ReadCoils(start, count),
            Register::InputRegister => Request::ReadInputRegisters(start, count),
            Register::HoldingRegister => Request::ReadHoldingRegisters(start, count),
        }
    }
}

/// How a loop's value is turned into passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopMode {
    /// A contact: a pass on the release edge after a closure of at least `min_hold`.
    /// On a register table, a non-zero register is a high input.
    Edge {
        /// Shorter closures are chatter and count nothing.
        min_hold: Duration,
    },
    /// A pass counter in registers: 16 bits (one register) or 32 bits (two registers,
    /// high word first). Reported raw as [`Event::Counter`] on every change.
    Counter {
        /// 16 or 32.
        bits: u8,
    },
}

/// One configured loop on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusPoint {
    /// The configured loop name (carried in the events).
    pub loop_name: String,
    /// Entry or exit lane.
    pub lane: Direction,
    /// Modbus slave (unit) id.
    pub slave: u8,
    /// Which table the value is in.
    pub register: Register,
    /// The (first) address.
    pub address: u16,
    /// The module reports a closed contact as a low input (edge mode only).
    pub active_low: bool,
    /// Contact or counter.
    pub mode: LoopMode,
}

impl ModbusPoint {
    /// How many bits or registers the point occupies.
    fn width(&self) -> u16 {
        match self.mode {
            LoopMode::Counter { bits: 32 } => 2,
            _ => 1,
        }
    }

    fn check(&self) -> Result<(), LoopError> {
        let name = &self.loop_name;
        if let LoopMode::Counter { bits } = self.mode {
            if bits != 16 && bits != 32 {
                return Err(LoopError::Config(format!(
                    "loop {name}: counter bits must be 16 or 32, not {bits}"
                )));
            }
            if self.register.is_bit() {
                return Err(LoopError::Config(format!(
                    "loop {name}: a counter needs input or holding registers, not {}",
                    self.register.as_str()
                )));
            }
        }
        if self.address.checked_add(self.width() - 1).is_none() {
            return Err(LoopError::Config(format!(
                "loop {name}: address {:#06x} leaves no room for the counter's second register",
                self.address
            )));
        }
        Ok(())
    }
}

/// Where a bus is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusTarget {
    /// Modbus RTU on a serial port (8N1).
    Rtu {
        /// The port path, e.g. `/dev/ttyUSB0`.
        port: String,
        /// Baud rate, e.g. 9600.
        baud: u32,
    },
    /// Modbus TCP.
    Tcp {
        /// `host:port`.
        host: String,
    },
}

impl BusTarget {
    /// Open a connection; the slave id is set per request afterwards.
    pub async fn connect(&self) -> Result<Context, LoopError> {
        match self {
            BusTarget::Rtu { port, baud } => {
                let builder = tokio_serial::new(port.as_str(), *baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One)
                    .flow_control(tokio_serial::FlowControl::None);
                let stream = tokio_serial::SerialStream::open(&builder).map_err(|source| {
                    LoopError::Serial {
                        port: port.clone(),
                        source,
                    }
                })?;
                Ok(tokio_modbus::client::rtu::attach_slave(
                    stream,
                    Slave::min_device(),
                ))
            }
            BusTarget::Tcp { host } => {
                let addr = tokio::net::lookup_host(host.as_str())
                    .await?
                    .next()
                    .ok_or_else(|| LoopError::Resolve(host.clone()))?;
                Ok(tokio_modbus::client::tcp::connect_slave(addr, Slave::tcp_device()).await?)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The poll core
// ---------------------------------------------------------------------------------------

/// One request of a poll cycle: a covering range of one slave's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadGroup {
    /// Slave (unit) id.
    pub slave: u8,
    /// The table.
    pub register: Register,
    /// First address read.
    pub start: u16,
    /// How many bits or registers are read.
    pub count: u16,
    /// Indexes into the bus's points.
    pub members: Vec<usize>,
}

/// Plan the requests of one cycle: points of the same slave and table whose addresses lie
/// within [`GROUP_SPAN`] share one request; every other point gets its own.
pub fn plan_reads(points: &[ModbusPoint]) -> Vec<ReadGroup> {
    let mut order: Vec<(usize, &ModbusPoint)> = points.iter().enumerate().collect();
    order.sort_by_key(|(_, p)| (p.slave, p.register, p.address));
    let mut groups: Vec<ReadGroup> = Vec::new();
    for (i, p) in order {
        let end = u32::from(p.address) + u32::from(p.width());
        if let Some(g) = groups.last_mut() {
            let fits = g.slave == p.slave
                && g.register == p.register
                && end - u32::from(g.start) <= u32::from(GROUP_SPAN);
            if fits {
                let covered = u32::from(g.start) + u32::from(g.count);
                let new_end = covered.max(end);
                // Within GROUP_SPAN of start, so it fits in u16.
                g.count = u16::try_from(new_end - u32::from(g.start)).unwrap_or(GROUP_SPAN);
                g.members.push(i);
                continue;
            }
        }
        groups.push(ReadGroup {
            slave: p.slave,
            register: p.register,
            start: p.address,
            count: p.width(),
            members: vec![i],
        });
    }
    groups
}

/// What a reply carried.
enum Values {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Bits(b) => b.len(),
            Values::Words(w) => w.len(),
        }
    }
}

#[derive(Debug, Clone)]
enum PointState {
    Edge(EdgeDetector),
    Counter { last_reported: Option<u64> },
}

/// How one poll cycle went (the bus itself answered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Requests answered with values.
    pub answered: usize,
    /// Requests answered with a Modbus exception or a malformed reply (bad inputs).
    pub refused: usize,
    /// Events queued by this cycle.
    pub queued: usize,
}

/// The transport-independent core of a bus: the read plan, per-point state (edge detectors,
/// last reported counter values) and the events not yet accepted by the gateway.
#[derive(Debug)]
pub struct BusPoller {
    points: Vec<ModbusPoint>,
    groups: Vec<ReadGroup>,
    states: Vec<PointState>,
    pending: VecDeque<Event>,
    timeout: Duration,
    status: DriverStatus,
}

impl BusPoller {
    /// A poller for `points`, each request bounded by `timeout`. Checks the points.
    pub fn new(
        points: Vec<ModbusPoint>,
        timeout: Duration,
        status: DriverStatus,
    ) -> Result<BusPoller, LoopError> {
        if points.is_empty() {
            return Err(LoopError::Config("a bus without loops".into()));
        }
        if timeout.is_zero() {
            return Err(LoopError::Config(
                "the request timeout must be above zero".into(),
            ));
        }
        for p in &points {
            p.check()?;
        }
        let groups = plan_reads(&points);
        let point_states = points
            .iter()
            .map(|p| match p.mode {
                LoopMode::Edge { min_hold } => PointState::Edge(EdgeDetector::new(min_hold)),
                LoopMode::Counter { .. } => PointState::Counter {
                    last_reported: None,
                },
            })
            .collect();
        Ok(BusPoller {
            points,
            groups,
            states: point_states,
            pending: VecDeque::new(),
            timeout,
            status,
        })
    }

    /// The requests one cycle makes.
    pub fn groups(&self) -> &[ReadGroup] {
        &self.groups
    }

    /// Events waiting to be accepted by the gateway, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Event> {
        self.pending.iter()
    }

    /// Read every point once, one request at a time, each under the timeout, and queue the
    /// resulting events (see [`BusPoller::flush`]).
    ///
    /// Generic over any tokio-modbus [`Client`] (which includes `SlaveContext`): the slave
    /// is switched per request with `set_slave`. Returns an error only when the bus itself
    /// failed (timeout, I/O): the caller must then drop the connection. A Modbus exception or
    /// a malformed reply counts as a bad input for the points it covers and the cycle goes on.
    pub async fn poll_cycle<C>(&mut self, client: &mut C) -> Result<CycleReport, LoopError>
    where
        C: Client + ?Sized,
    {
        let mut report = CycleReport::default();
        for gi in 0..self.groups.len() {
            let Some(group) = self.groups.get(gi) else {
                continue;
            };
            let (slave, register, start, count) =
                (group.slave, group.register, group.start, group.count);
            client.set_slave(Slave(slave));
            let request = register.request(start, count);
            let reply = tokio::time::timeout(self.timeout, client.call(request))
                .await
                .map_err(|_| LoopError::Timeout(self.timeout))?;
            let now = Instant::now();
            let problem = match reply {
                Err(tokio_modbus::Error::Transport(e)) => return Err(LoopError::Io(e)),
                Err(tokio_modbus::Error::Protocol(e)) => format!("mismatched reply: {e}"),
                Ok(Err(code)) => format!("exception {}", exception_text(code)),
                Ok(Ok(response)) => match values_of(response, register) {
                    Some(values) if values.len() >= usize::from(count) => {
                        report.answered += 1;
                        report.queued += self.apply(gi, &values, now);
                        continue;
                    }
                    Some(values) => format!("{} values for {count} requested", values.len()),
                    None => "a reply of the wrong kind".to_owned(),
                },
            };
            report.refused += 1;
            let what = format!(
                "slave {slave} {} {start:#06x}+{count}: {problem}",
                register.as_str()
            );
            let n = self.status.bad_input(&what);
            if should_log(n) {
                tracing::warn!(bus = %self.status.name(), slave, register = register.as_str(), start, count, problem = %problem, count_bad = n, "modbus read refused");
            }
        }
        Ok(report)
    }

    /// Update the points of group `gi` from its values; returns how many events were queued.
    fn apply(&mut self, gi: usize, values: &Values, now: Instant) -> usize {
        let Some(group) = self.groups.get(gi) else {
            return 0;
        };
        let mut queued = 0;
        for &pi in &group.members {
            let (Some(point), Some(state)) = (self.points.get(pi), self.states.get_mut(pi)) else {
                continue;
            };
            let offset = usize::from(point.address.saturating_sub(group.start));
            match state {
                PointState::Edge(detector) => {
                    let raw = match values {
                        Values::Bits(b) => b.get(offset).copied(),
                        Values::Words(w) => w.get(offset).map(|v| *v != 0),
                    };
                    let Some(raw) = raw else { continue };
                    if detector.update(is_closed(raw, point.active_low), now) {
                        tracing::debug!(bus = %self.status.name(), loop_name = %point.loop_name, lane = point.lane.as_str(), "loop pass");
                        self.pending.push_back(Event::Pass {
                            loop_name: point.loop_name.clone(),
                            lane: point.lane,
                        });
                        queued += 1;
                    }
                }
                PointState::Counter { last_reported } => {
                    let Values::Words(words) = values else {
                        continue;
                    };
                    let LoopMode::Counter { bits } = point.mode else {
                        continue;
                    };
                    let value = if bits == 32 {
                        match (words.get(offset), words.get(offset + 1)) {
                            (Some(hi), Some(lo)) => (u64::from(*hi) << 16) | u64::from(*lo),
                            _ => continue,
                        }
                    } else {
                        match words.get(offset) {
                            Some(v) => u64::from(*v),
                            None => continue,
                        }
                    };
                    if *last_reported != Some(value) {
                        *last_reported = Some(value);
                        self.pending.push_back(Event::Counter {
                            loop_name: point.loop_name.clone(),
                            lane: point.lane,
                            value,
                            bits,
                        });
                        queued += 1;
                    }
                }
            }
        }
        queued
    }

    /// Hand the pending events to the gateway, oldest first.
    ///
    /// An event leaves the list only once the gateway accepted it. `Unavailable` stops the
    /// flush (the event is retried on the next call); `Invalid` can never succeed, so that
    /// event is dropped and counted as a bad input; `Closed` is returned as
    /// [`LoopError::SinkClosed`]. Cancelling the future loses nothing.
    pub async fn flush(&mut self, sink: &EventSink) -> Result<usize, LoopError> {
        let mut delivered = 0;
        while let Some(event) = self.pending.front() {
            match sink.submit(event.clone()).await {
                Ok(_) => {
                    self.pending.pop_front();
                    self.status.event();
                    delivered += 1;
                }
                Err(SinkError::Closed) => return Err(LoopError::SinkClosed),
                Err(SinkError::Invalid(why)) => {
                    let n = self.status.bad_input(&format!("event refused: {why}"));
                    if should_log(n) {
                        tracing::warn!(bus = %self.status.name(), reason = %why, "gateway refused a loop event; dropped");
                    }
                    self.pending.pop_front();
                }
                Err(SinkError::Unavailable(why)) => {
                    self.status.set_problem(&format!("gateway: {why}"));
                    tracing::warn!(bus = %self.status.name(), reason = %why, pending = self.pending.len(), "gateway cannot store loop events now; retrying next cycle");
                    break;
                }
            }
        }
        Ok(delivered)
    }
}

fn exception_text(code: ExceptionCode) -> String {
    format!("{:#04x} ({code:?})", u8::from(code))
}

fn values_of(response: Response, register: Register) -> Option<Values> {
    match (response, register) {
        (Response::ReadDiscreteInputs(b), Register::DiscreteInput)
        | (Response::ReadCoils(b), Register::Coil) => Some(Values::Bits(b)),
        (Response::ReadInputRegisters(w), Register::InputRegister)
        | (Response::ReadHoldingRegisters(w), Register::HoldingRegister) => Some(Values::Words(w)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// One Modbus connection shared by every loop configured on the same port or host.
#[derive(Debug, Clone)]
pub struct ModbusBus {
    /// The configured name (logs, status).
    pub name: String,
    /// Where the bus is.
    pub target: BusTarget,
    /// The loops read on this bus.
    pub points: Vec<ModbusPoint>,
    /// Time from the start of one cycle to the start of the next.
    pub poll_interval: Duration,
    /// Limit for each request (and, at least 5 s, for opening a TCP connection).
    pub timeout: Duration,
    /// Live status for the status page.
    pub status: DriverStatus,
}

impl ModbusBus {
    fn fatal(&self, e: &LoopError) -> DriverError {
        DriverError::Fatal {
            driver: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn check_target(&self) -> Result<(), LoopError> {
        if let BusTarget::Rtu { .. } = self.target {
            if let Some(p) = self
                .points
                .iter()
                .find(|p| !Slave(p.slave).is_single_device())
            {
                return Err(LoopError::Config(format!(
                    "loop {}: RTU slave id must be 1..=247, not {}",
                    p.loop_name, p.slave
                )));
            }
        }
        Ok(())
    }

    /// Run on an already-open connection first (e.g. a tokio-modbus `Context` from
    /// `rtu::attach_slave` over a serial stream, or `tcp::attach`); when it fails, reconnect
    /// to [`ModbusBus::target`] as [`Driver::run`] does. Returns when `shutdown` is cancelled
    /// or the gateway closes the sink.
    pub async fn run_with_context(
        self,
        first: Context,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> Result<(), DriverError> {
        self.run_loop(Some(first), sink, shutdown).await
    }

    async fn run_loop(
        self,
        mut first: Option<Context>,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> Result<(), DriverError> {
        self.check_target().map_err(|e| self.fatal(&e))?;
        let mut poller = BusPoller::new(self.points.clone(), self.timeout, self.status.clone())
            .map_err(|e| self.fatal(&e))?;
        let poll_interval = self.poll_interval.max(Duration::from_millis(1));
        let connect_timeout = self.timeout.max(MIN_CONNECT_TIMEOUT);
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        let mut link: Option<Context> = None;
        let mut outage = Outage::new(format!("modbus bus {}", self.name), "down", "up again");
        let mut connected_once = false;
        tracing::info!(bus = %self.name, loops = self.points.len(), requests = poller.groups().len(), "modbus bus starting");

        loop {
            let cycle_start = Instant::now();
            if link.is_none() {
                let attempt = if let Some(ctx) = first.take() {
                    Ok(ctx)
                } else {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        r = tokio::time::timeout(connect_timeout, self.target.connect()) => {
                            r.unwrap_or(Err(LoopError::Timeout(connect_timeout)))
                        }
                    }
                };
                match attempt {
                    Ok(ctx) => link = Some(ctx),
                    Err(e) => self.mark_down(&e, &mut outage),
                }
            }
            if let Some(ctx) = link.as_mut() {
                let outcome = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    r = poller.poll_cycle(ctx) => r,
                };
                match outcome {
                    Ok(_) => {
                        self.status.set_connected(true);
                        if outage.recovered().is_none() && !connected_once {
                            tracing::info!(bus = %self.name, "modbus bus connected");
                        }
                        connected_once = true;
                        backoff.reset();
                    }
                    Err(e) => {
                        self.mark_down(&e, &mut outage);
                        link = None;
                    }
                }
            }
            let flushed = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = poller.flush(&sink) => r,
            };
            if flushed.is_err() {
                tracing::info!(bus = %self.name, "gateway closed; modbus bus stopping");
                return Ok(());
            }
            let wake = if link.is_some() {
                cycle_start + poll_interval
            } else {
                Instant::now() + backoff.next_delay()
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Record a lost bus: logged when the outage starts and summarised while it lasts.
    fn mark_down(&self, e: &LoopError, outage: &mut Outage) {
        // The reason first: whoever sees the bus down also sees why.
        self.status.set_problem(&e.to_string());
        self.status.set_connected(false);
        outage.failed(e);
    }
}

impl Driver for ModbusBus {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move { self.run_loop(None, sink, shutdown).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accepted, Submission};
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;
    use tokio_modbus::server::Service;
    use tokio_modbus::SlaveRequest;

    const DEADLINE: Duration = Duration::from_secs(15);
    const MIN_HOLD: Duration = Duration::from_millis(20);
    /// How long the simulated contact stays closed, measured by the reads it serves.
    const HOLD: Duration = Duration::from_millis(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn edge(name: &str, lane: Direction, slave: u8, address: u16) -> ModbusPoint {
        ModbusPoint {
            loop_name: name.into(),
            lane,
            slave,
            register: Register::DiscreteInput,
            address,
            active_low: true,
            mode: LoopMode::Edge { min_hold: MIN_HOLD },
        }
    }

    fn counter(
        name: &str,
        lane: Direction,
        slave: u8,
        register: Register,
        address: u16,
        bits: u8,
    ) -> ModbusPoint {
        ModbusPoint {
            loop_name: name.into(),
            lane,
            slave,
            register,
            address,
            active_low: false,
            mode: LoopMode::Counter { bits },
        }
    }

    // ----- pure logic ------------------------------------------------------------------

    #[test]
    fn active_low_inputs_are_closed_when_low() {
        assert!(is_closed(false, true));
        assert!(!is_closed(true, true));
        assert!(is_closed(true, false));
        assert!(!is_closed(false, false));
    }

    #[test]
    fn an_active_low_pulse_held_long_enough_counts_once_on_release() {
        let t0 = Instant::now();
        let mut d = EdgeDetector::new(ms(100));
        // Raw levels of an active-low input: high (open), low (closed) ..., high again.
        let samples = [
            (true, 0),
            (false, 10),
            (false, 60),
            (false, 110),
            (true, 120),
            (true, 130),
        ];
        let passes: Vec<bool> = samples
            .iter()
            .map(|&(raw, t)| d.update(is_closed(raw, true), t0 + ms(t)))
            .collect();
        assert_eq!(passes, [false, false, false, false, true, false]);
    }

    #[test]
    fn a_closure_shorter_than_min_hold_is_chatter() {
        let t0 = Instant::now();
        let mut d = EdgeDetector::new(ms(100));
        assert!(!d.update(false, t0));
        assert!(!d.update(true, t0 + ms(10)));
        assert!(!d.update(false, t0 + ms(109)));
        // Exactly min_hold counts.
        assert!(!d.update(true, t0 + ms(200)));
        assert!(d.update(false, t0 + ms(300)));
    }

    #[test]
    fn a_loop_closed_at_start_counts_when_released_after_min_hold() {
        let t0 = Instant::now();
        let mut d = EdgeDetector::new(ms(100));
        assert!(!d.update(true, t0), "the first sample only sets the state");
        assert!(!d.update(true, t0 + ms(50)));
        assert!(d.update(false, t0 + ms(150)));

        let mut short = EdgeDetector::new(ms(100));
        assert!(!short.update(true, t0));
        assert!(!short.update(false, t0 + ms(50)));
    }

    #[test]
    fn an_open_loop_at_start_counts_nothing() {
        let t0 = Instant::now();
        let mut d = EdgeDetector::new(ms(0));
        assert!(!d.update(false, t0));
        assert!(!d.update(false, t0 + ms(500)));
    }

    #[test]
    fn the_first_counter_reading_is_a_baseline() {
        assert_eq!(counter_delta(None, 1234, 16), CounterStep::Baseline);
        assert_eq!(CounterStep::Baseline.passes(), 0);
    }

    #[test]
    fn a_growing_counter_counts_the_difference() {
        assert_eq!(counter_delta(Some(10), 15, 16), CounterStep::Normal(5));
        assert_eq!(counter_delta(Some(15), 15, 16), CounterStep::Normal(0));
        assert_eq!(counter_delta(Some(10), 15, 16).passes(), 5);
    }

    #[test]
    fn a_16_bit_counter_wrapping_from_65535_to_3_counts_4() {
        let step = counter_delta(Some(65535), 3, 16);
        assert_eq!(step, CounterStep::Wrap(4));
        assert_eq!(step.passes(), 4);
        assert_eq!(counter_delta(Some(65530), 3, 16), CounterStep::Wrap(9));
    }

    #[test]
    fn a_32_bit_counter_wraps_at_32_bits() {
        assert_eq!(
            counter_delta(Some(0xFFFF_FFFE), 1, 32),
            CounterStep::Wrap(3)
        );
        // 65535 -> 3 is no wrap for a 32-bit counter: a reboot.
        assert_eq!(counter_delta(Some(65535), 3, 32), CounterStep::Reset(3));
    }

    #[test]
    fn a_counter_far_below_the_last_reading_is_a_reboot() {
        assert_eq!(counter_delta(Some(1000), 7, 16), CounterStep::Reset(7));
        assert_eq!(counter_delta(Some(1000), 7, 16).passes(), 7);
        assert_eq!(
            counter_delta(Some(5_000_000), 12, 32),
            CounterStep::Reset(12)
        );
        assert_eq!(counter_delta(Some(1000), 0, 16), CounterStep::Reset(0));
    }

    #[test]
    fn counter_values_are_masked_to_their_width() {
        assert_eq!(
            counter_delta(Some(0x1_0005), 0x2_0009, 16),
            CounterStep::Normal(4)
        );
        assert_eq!(
            counter_delta(Some(0xFFFF), 0x1_0002, 16),
            CounterStep::Wrap(3)
        );
        assert_eq!(
            counter_delta(Some(0x1_0000_0000), 0x1_0000_0007, 32),
            CounterStep::Normal(7)
        );
        // Silly widths do not panic.
        assert_eq!(counter_delta(Some(u64::MAX), 1, 64), CounterStep::Wrap(2));
        assert_eq!(counter_delta(Some(1), 0, 0), CounterStep::Reset(0));
    }

    #[test]
    fn register_names_parse() {
        assert_eq!(
            Register::parse("discrete_input").unwrap(),
            Register::DiscreteInput
        );
        assert_eq!(Register::parse("coil").unwrap(), Register::Coil);
        assert_eq!(
            Register::parse("input_register").unwrap(),
            Register::InputRegister
        );
        assert_eq!(
            Register::parse("holding_register").unwrap(),
            Register::HoldingRegister
        );
        assert!(matches!(
            Register::parse("holding"),
            Err(LoopError::UnknownRegister(_))
        ));
    }

    #[test]
    fn neighbouring_inputs_of_one_slave_are_read_with_one_request() {
        let points: Vec<ModbusPoint> = (0..4)
            .map(|i| edge(&format!("l{i}"), Direction::In, 1, 0x23 - i))
            .collect();
        let groups = plan_reads(&points);
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].start, groups[0].count), (0x20, 4));
        let mut members = groups[0].members.clone();
        members.sort_unstable();
        assert_eq!(members, [0, 1, 2, 3]);
    }

    #[test]
    fn distant_addresses_other_slaves_and_other_tables_get_their_own_requests() {
        let mut coil = edge("c", Direction::In, 1, 0x21);
        coil.register = Register::Coil;
        let points = vec![
            edge("a", Direction::In, 1, 0x20),
            edge("far", Direction::In, 1, 0x40),
            edge("other-slave", Direction::In, 2, 0x20),
            coil,
        ];
        let groups = plan_reads(&points);
        assert_eq!(groups.len(), 4, "{groups:?}");
        assert!(groups.iter().all(|g| g.count == 1 && g.members.len() == 1));
    }

    #[test]
    fn a_32_bit_counter_covers_two_registers_in_the_plan() {
        let points = vec![
            counter("a", Direction::In, 1, Register::HoldingRegister, 0x10, 32),
            counter("b", Direction::Out, 1, Register::HoldingRegister, 0x1E, 16),
        ];
        let groups = plan_reads(&points);
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].start, groups[0].count), (0x10, 15));

        let points = vec![
            counter("a", Direction::In, 1, Register::HoldingRegister, 0x10, 32),
            counter("b", Direction::Out, 1, Register::HoldingRegister, 0x1F, 32),
        ];
        let groups = plan_reads(&points);
        assert_eq!(groups.len(), 2, "a span of 17 is split");
        assert_eq!(groups[0].count, 2);
    }

    #[test]
    fn impossible_points_are_refused() {
        let st = DriverStatus::new("b", "modbus");
        let on_bits = counter("a", Direction::In, 1, Register::DiscreteInput, 0, 16);
        assert!(matches!(
            BusPoller::new(vec![on_bits], ms(100), st.clone()),
            Err(LoopError::Config(_))
        ));
        let odd_width = counter("a", Direction::In, 1, Register::HoldingRegister, 0, 24);
        assert!(BusPoller::new(vec![odd_width], ms(100), st.clone()).is_err());
        let at_the_end = counter("a", Direction::In, 1, Register::HoldingRegister, 0xFFFF, 32);
        assert!(BusPoller::new(vec![at_the_end], ms(100), st.clone()).is_err());
        assert!(BusPoller::new(Vec::new(), ms(100), st.clone()).is_err());
        let ok = counter("a", Direction::In, 1, Register::HoldingRegister, 0xFFFF, 16);
        assert!(BusPoller::new(vec![ok], ms(100), st).is_ok());
    }

    #[tokio::test]
    async fn an_rtu_bus_with_a_broadcast_slave_id_is_a_fatal_error() {
        let bus = ModbusBus {
            name: "rs485".into(),
            target: BusTarget::Rtu {
                port: "/nonexistent/ttyLOOP".into(),
                baud: 9600,
            },
            points: vec![edge("a", Direction::In, 0, 0x20)],
            poll_interval: ms(5),
            timeout: ms(100),
            status: DriverStatus::new("rs485", "modbus"),
        };
        let (sink, _rx) = EventSink::channel(1);
        let got = tokio::time::timeout(DEADLINE, Box::new(bus).run(sink, CancellationToken::new()))
            .await
            .expect("returns at once");
        assert!(matches!(got, Err(DriverError::Fatal { .. })), "{got:?}");
    }

    // ----- a simulated IO module -------------------------------------------------------

    /// The registers of one simulated module (or several slaves on one bus).
    #[derive(Default)]
    struct Module {
        slaves: Vec<u8>,
        discrete: HashMap<u16, bool>,
        holding: HashMap<u16, u16>,
        input_regs: HashMap<u16, u16>,
        /// Every request answered: slave, request, when.
        log: Vec<(u8, Request<'static>, Instant)>,
    }

    fn read_map<T: Copy>(
        map: &HashMap<u16, T>,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<T>, ExceptionCode> {
        (0..cnt)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| map.get(&a).copied())
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    impl Module {
        fn answer(&self, req: &Request<'static>) -> Result<Option<Response>, ExceptionCode> {
            match *req {
                Request::ReadDiscreteInputs(a, c) => {
                    read_map(&self.discrete, a, c).map(|b| Some(Response::ReadDiscreteInputs(b)))
                }
                Request::ReadHoldingRegisters(a, c) => {
                    read_map(&self.holding, a, c).map(|w| Some(Response::ReadHoldingRegisters(w)))
                }
                Request::ReadInputRegisters(a, c) => {
                    read_map(&self.input_regs, a, c).map(|w| Some(Response::ReadInputRegisters(w)))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        }

        /// When the discrete-input reads since log entry `from` were served.
        fn di_reads_since(&self, from: usize) -> Vec<Instant> {
            self.log
                .iter()
                .skip(from)
                .filter(|(_, r, _)| matches!(r, Request::ReadDiscreteInputs(..)))
                .map(|(_, _, t)| *t)
                .collect()
        }
    }

    /// A tokio-modbus server `Service` over a shared [`Module`].
    #[derive(Clone)]
    struct Sim {
        module: Arc<Mutex<Module>>,
        served: watch::Sender<usize>,
    }

    impl Service for Sim {
        type Request = SlaveRequest<'static>;
        type Response = Option<Response>;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

        fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
            let answer = {
                let mut m = self.module.lock().unwrap();
                if m.slaves.contains(&req.slave) {
                    m.log.push((req.slave, req.request.clone(), Instant::now()));
                    m.answer(&req.request)
                } else {
                    // Another slave on the RS485 bus: this module stays silent.
                    return std::future::ready(Ok(None));
                }
            };
            self.served.send_modify(|n| *n += 1);
            std::future::ready(answer)
        }
    }

    impl Sim {
        /// A 4-input active-low DI module (inputs 0x20..=0x23, all open) on `slaves`.
        fn new(slaves: &[u8]) -> Sim {
            let mut m = Module {
                slaves: slaves.to_vec(),
                ..Module::default()
            };
            for a in 0x20..=0x23 {
                m.discrete.insert(a, true);
            }
            Sim {
                module: Arc::new(Mutex::new(m)),
                served: watch::channel(0).0,
            }
        }

        fn with<R>(&self, f: impl FnOnce(&mut Module) -> R) -> R {
            f(&mut self.module.lock().unwrap())
        }

        /// Wait until the module state satisfies `cond` (checked after every request served).
        async fn wait(&self, what: &str, cond: impl Fn(&Module) -> bool) {
            let mut rx = self.served.subscribe();
            let waited =
                tokio::time::timeout(DEADLINE, rx.wait_for(|_| self.with(|m| cond(m)))).await;
            assert!(waited.is_ok(), "timed out waiting for {what}");
        }

        /// Wait until `n` more requests have been served.
        async fn more_reads(&self, n: usize) {
            let from = self.with(|m| m.log.len());
            self.wait("more reads", |m| m.log.len() >= from + n).await;
        }

        /// Close the active-low inputs `addrs` for `HOLD`, then open them.
        async fn pulse(&self, addrs: &[u16]) {
            self.close(addrs).await;
            self.open(addrs).await;
        }

        /// Close the active-low inputs `addrs` until the reads served span `HOLD`.
        async fn close(&self, addrs: &[u16]) {
            let from = self.with(|m| {
                for a in addrs {
                    m.discrete.insert(*a, false);
                }
                m.log.len()
            });
            self.wait("the closed input to be read for HOLD", |m| {
                let reads = m.di_reads_since(from);
                reads.len() >= 2
                    && reads
                        .last()
                        .zip(reads.first())
                        .is_some_and(|(l, f)| l.duration_since(*f) >= HOLD)
            })
            .await;
        }

        /// Open the inputs `addrs` until the driver has read them open twice.
        async fn open(&self, addrs: &[u16]) {
            let from = self.with(|m| {
                for a in addrs {
                    m.discrete.insert(*a, true);
                }
                m.log.len()
            });
            self.wait("the open input to be read", |m| {
                m.di_reads_since(from).len() >= 2
            })
            .await;
        }

        fn requests(&self) -> Vec<Request<'static>> {
            self.with(|m| m.log.iter().map(|(_, r, _)| r.clone()).collect())
        }
    }

    fn start_tcp(sim: Sim, listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream, addr: SocketAddr| {
                let sim = sim.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, move |_| {
                        Ok(Some(sim.clone()))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_err: std::io::Error| {}).await;
        })
    }

    /// What reached the gateway side.
    struct Gateway {
        events: Vec<Event>,
        rx: mpsc::UnboundedReceiver<Event>,
        refused: Arc<AtomicUsize>,
    }

    /// A sink whose ingest side answers `Unavailable` to the first `refuse_first`
    /// submissions and `Applied` to the rest.
    fn gateway(refuse_first: usize) -> (EventSink, Gateway) {
        let (sink, mut rx) = EventSink::channel(8);
        let (tx, out) = mpsc::unbounded_channel();
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        tokio::spawn(async move {
            while let Some(Submission { event, reply }) = rx.recv().await {
                if counter.load(Ordering::SeqCst) < refuse_first {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = reply.send(Err(SinkError::Unavailable("disk full".into())));
                    continue;
                }
                let _ = tx.send(event);
                let _ = reply.send(Ok(Accepted::Applied));
            }
        });
        (
            sink,
            Gateway {
                events: Vec::new(),
                rx: out,
                refused,
            },
        )
    }

    impl Gateway {
        async fn until(&mut self, what: &str, cond: impl Fn(&[Event]) -> bool) {
            let got = tokio::time::timeout(DEADLINE, async {
                while !cond(&self.events) {
                    match self.rx.recv().await {
                        Some(e) => self.events.push(e),
                        None => return,
                    }
                }
            })
            .await;
            assert!(
                got.is_ok(),
                "timed out waiting for {what}; got {:?}",
                self.events
            );
        }

        fn drain(&mut self) {
            while let Ok(e) = self.rx.try_recv() {
                self.events.push(e);
            }
        }
    }

    fn passes(events: &[Event], lane: Direction) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::Pass { lane: l, .. } if *l == lane))
            .count()
    }

    fn counter_values(events: &[Event], name: &str) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Counter {
                    loop_name, value, ..
                } if loop_name == name => Some(*value),
                _ => None,
            })
            .collect()
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + DEADLINE;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(ms(2)).await;
        }
    }

    fn bus(name: &str, target: BusTarget, points: Vec<ModbusPoint>) -> ModbusBus {
        ModbusBus {
            name: name.into(),
            target,
            points,
            poll_interval: ms(5),
            timeout: ms(500),
            status: DriverStatus::new(name, "modbus"),
        }
    }

    fn no_port() -> BusTarget {
        BusTarget::Rtu {
            port: "/nonexistent/ttyLOOP".into(),
            baud: 9600,
        }
    }

    async fn stop(shutdown: &CancellationToken, driver: JoinHandle<Result<(), DriverError>>) {
        shutdown.cancel();
        let done = tokio::time::timeout(DEADLINE, driver).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "the driver stops on shutdown: {done:?}"
        );
    }

    // ----- Modbus RTU over a pseudo-terminal pair --------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_entry_and_four_exit_pulses_on_one_rtu_module_give_ten_in_and_four_out_passes() {
        let (client_end, server_end) = tokio_serial::SerialStream::pair().expect("pty pair");
        let sim = Sim::new(&[1]);
        let server = tokio::spawn(
            tokio_modbus::server::rtu::Server::new(server_end).serve_forever(sim.clone()),
        );
        let bus = bus(
            "rs485",
            no_port(),
            vec![
                edge("entry", Direction::In, 1, 0x20),
                edge("exit", Direction::Out, 1, 0x21),
            ],
        );
        let status = bus.status.clone();
        let (sink, mut gw) = gateway(0);
        let shutdown = CancellationToken::new();
        let ctx = tokio_modbus::client::rtu::attach_slave(client_end, Slave(1));
        let driver = tokio::spawn(bus.run_with_context(ctx, sink, shutdown.clone()));

        // Nothing is counted while the loops are held closed: only on the release edge.
        sim.close(&[0x20, 0x21]).await;
        sim.more_reads(2).await;
        gw.drain();
        assert!(gw.events.is_empty(), "{:?}", gw.events);
        sim.open(&[0x20, 0x21]).await;
        gw.until("the first passes", |e| e.len() == 2).await;
        for i in 1..10 {
            if i < 4 {
                sim.pulse(&[0x20, 0x21]).await;
            } else {
                sim.pulse(&[0x20]).await;
            }
        }
        gw.until("10 in and 4 out", |e| {
            passes(e, Direction::In) >= 10 && passes(e, Direction::Out) >= 4
        })
        .await;
        sim.more_reads(5).await;
        gw.drain();
        assert_eq!(passes(&gw.events, Direction::In), 10, "{:?}", gw.events);
        assert_eq!(passes(&gw.events, Direction::Out), 4, "{:?}", gw.events);
        assert!(gw.events.iter().all(|e| match e {
            Event::Pass { loop_name, lane } =>
                (loop_name == "entry" && *lane == Direction::In)
                    || (loop_name == "exit" && *lane == Direction::Out),
            _ => false,
        }));
        // Both loops are read with one request per cycle (function 0x02, 0x20, 2 inputs).
        let requests = sim.requests();
        assert!(requests.len() > 20);
        assert!(
            requests
                .iter()
                .all(|r| *r == Request::ReadDiscreteInputs(0x20, 2)),
            "{requests:?}"
        );
        let snap = status.snapshot();
        assert!(snap.connected);
        assert_eq!(snap.events, 14);
        assert_eq!(snap.bad_inputs, 0);

        stop(&shutdown, driver).await;
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_rtu_bus_opens_its_serial_port_by_path() {
        use tokio_serial::SerialPort as _;
        // qemu-user 7.2 lacks the termios2 ioctls serialport configures ports with: under
        // it every open fails with ENOSYS (a real kernel has them).
        if let Err(e) = tokio_serial::new("/dev/ptmx", 9600).open() {
            if e.to_string().contains("Function not implemented") {
                let why = format!("serial ports cannot be configured under this emulator ({e})");
                eprintln!("skipped: {why}");
                if let Some(f) = std::env::var_os("LOTLINK_TEST_SKIPS") {
                    use std::io::Write as _;
                    // One appending write: other test binaries may add their lines too.
                    let line = format!("an_rtu_bus_opens_its_serial_port_by_path: {why}\n");
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(f)
                    {
                        let _ = f.write_all(line.as_bytes());
                    }
                }
                return;
            }
        }
        let (server_end, pty) = tokio_serial::SerialStream::pair().expect("pty pair");
        let path = pty.name().expect("the pty has a path");
        let sim = Sim::new(&[1]);
        let server = tokio::spawn(
            tokio_modbus::server::rtu::Server::new(server_end).serve_forever(sim.clone()),
        );
        let bus = bus(
            "rs485",
            BusTarget::Rtu {
                port: path,
                baud: 9600,
            },
            vec![edge("entry", Direction::In, 1, 0x22)],
        );
        let status = bus.status.clone();
        let (sink, mut gw) = gateway(0);
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(Box::new(bus).run(sink, shutdown.clone()));
        sim.pulse(&[0x22]).await;
        gw.until("one pass", |e| passes(e, Direction::In) == 1)
            .await;
        assert!(status.connected());
        assert_eq!(sim.requests()[0], Request::ReadDiscreteInputs(0x22, 1));

        stop(&shutdown, driver).await;
        server.abort();
        drop(pty);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtu_counter_registers_are_reported_raw_on_every_change_and_an_exception_spares_the_bus(
    ) {
        let (client_end, server_end) = tokio_serial::SerialStream::pair().expect("pty pair");
        let sim = Sim::new(&[3]);
        sim.with(|m| {
            m.holding.insert(0x10, 65530);
            m.input_regs.insert(0x30, 0x0001);
            m.input_regs.insert(0x31, 0x0002);
        });
        let server = tokio::spawn(
            tokio_modbus::server::rtu::Server::new(server_end).serve_forever(sim.clone()),
        );
        let mut ghost = edge("ghost", Direction::In, 3, 0x200);
        ghost.register = Register::HoldingRegister;
        let bus = bus(
            "rs485",
            no_port(),
            vec![
                counter(
                    "gate-in",
                    Direction::In,
                    3,
                    Register::HoldingRegister,
                    0x10,
                    16,
                ),
                counter(
                    "gate-out",
                    Direction::Out,
                    3,
                    Register::InputRegister,
                    0x30,
                    32,
                ),
                ghost,
            ],
        );
        let status = bus.status.clone();
        let (sink, mut gw) = gateway(0);
        let shutdown = CancellationToken::new();
        let ctx = tokio_modbus::client::rtu::attach_slave(client_end, Slave(1));
        let driver = tokio::spawn(bus.run_with_context(ctx, sink, shutdown.clone()));

        gw.until("baselines", |e| {
            counter_values(e, "gate-in") == [65530] && counter_values(e, "gate-out") == [65538]
        })
        .await;
        sim.with(|m| m.holding.insert(0x10, 65535));
        gw.until("65535", |e| counter_values(e, "gate-in").len() == 2)
            .await;
        sim.with(|m| {
            m.holding.insert(0x10, 3);
            m.input_regs.insert(0x30, 0xFFFF);
            m.input_regs.insert(0x31, 0xFFFF);
        });
        gw.until("3", |e| counter_values(e, "gate-in").len() == 3)
            .await;
        gw.until("0xFFFFFFFF", |e| counter_values(e, "gate-out").len() == 2)
            .await;
        sim.with(|m| {
            m.input_regs.insert(0x30, 0);
            m.input_regs.insert(0x31, 1);
        });
        gw.until("the 32-bit wrap", |e| {
            counter_values(e, "gate-out").len() == 3
        })
        .await;
        sim.more_reads(9).await;
        gw.drain();

        assert_eq!(counter_values(&gw.events, "gate-in"), [65530, 65535, 3]);
        assert_eq!(
            counter_values(&gw.events, "gate-out"),
            [65538, 0xFFFF_FFFF, 1]
        );
        assert!(gw.events.iter().all(|e| match e {
            Event::Counter {
                loop_name,
                bits,
                lane,
                ..
            } =>
                (loop_name == "gate-in" && *bits == 16 && *lane == Direction::In)
                    || (loop_name == "gate-out" && *bits == 32 && *lane == Direction::Out),
            _ => false,
        }));
        // What the gateway will make of them.
        assert_eq!(counter_delta(Some(65535), 3, 16).passes(), 4);
        assert_eq!(counter_delta(Some(0xFFFF_FFFF), 1, 32).passes(), 2);
        // The ghost address is refused by the module every cycle; the bus stays up.
        let snap = status.snapshot();
        assert!(snap.bad_inputs >= 3, "{snap:?}");
        assert!(snap.connected);
        assert!(snap.last_problem.unwrap_or_default().contains("0x0200"));

        stop(&shutdown, driver).await;
        server.abort();
    }

    // ----- Modbus TCP -----------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tcp_bus_counts_passes_and_counters_and_retries_an_event_the_gateway_could_not_store()
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Sim::new(&[1]);
        sim.with(|m| {
            m.holding.insert(0x10, 65530);
        });
        let server = start_tcp(sim.clone(), listener);
        let bus = bus(
            "tcp-io",
            BusTarget::Tcp {
                host: addr.to_string(),
            },
            vec![
                edge("entry", Direction::In, 1, 0x20),
                edge("exit", Direction::Out, 1, 0x23),
                counter(
                    "gate",
                    Direction::In,
                    1,
                    Register::HoldingRegister,
                    0x10,
                    16,
                ),
            ],
        );
        let status = bus.status.clone();
        // The first submission (the counter's baseline) is refused once.
        let (sink, mut gw) = gateway(1);
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(Box::new(bus).run(sink, shutdown.clone()));

        gw.until("the baseline", |e| counter_values(e, "gate") == [65530])
            .await;
        for i in 0..3 {
            if i < 2 {
                sim.pulse(&[0x20, 0x23]).await;
            } else {
                sim.pulse(&[0x20]).await;
            }
        }
        sim.with(|m| m.holding.insert(0x10, 65535));
        gw.until("65535", |e| counter_values(e, "gate").len() == 2)
            .await;
        sim.with(|m| m.holding.insert(0x10, 3));
        gw.until("passes and 3", |e| {
            passes(e, Direction::In) >= 3
                && passes(e, Direction::Out) >= 2
                && counter_values(e, "gate").len() == 3
        })
        .await;
        sim.more_reads(6).await;
        gw.drain();
        assert_eq!(gw.refused.load(Ordering::SeqCst), 1);
        assert_eq!(passes(&gw.events, Direction::In), 3);
        assert_eq!(passes(&gw.events, Direction::Out), 2);
        assert_eq!(counter_values(&gw.events, "gate"), [65530, 65535, 3]);
        // 0x20..0x23 is one request, the holding register another; unit id 1 each time.
        let requests = sim.requests();
        assert!(requests
            .iter()
            .all(|r| *r == Request::ReadDiscreteInputs(0x20, 4)
                || *r == Request::ReadHoldingRegisters(0x10, 1)));
        assert!(sim.with(|m| m.log.iter().all(|(slave, _, _)| *slave == 1)));
        assert!(status.connected());

        stop(&shutdown, driver).await;
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_that_goes_away_marks_the_bus_down_and_counting_resumes_when_it_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Sim::new(&[1]);
        let server = start_tcp(sim.clone(), listener);
        let bus = bus(
            "tcp-io",
            BusTarget::Tcp {
                host: addr.to_string(),
            },
            vec![edge("entry", Direction::In, 1, 0x20)],
        );
        let status = bus.status.clone();
        let (sink, mut gw) = gateway(0);
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(Box::new(bus).run(sink, shutdown.clone()));

        eventually("connected", || status.connected()).await;
        sim.pulse(&[0x20]).await;
        gw.until("the first pass", |e| passes(e, Direction::In) == 1)
            .await;

        server.abort();
        let _ = server.await;
        eventually("disconnected", || !status.connected()).await;
        assert!(status.snapshot().last_problem.is_some());

        let listener = TcpListener::bind(addr).await.expect("the same port again");
        let server = start_tcp(sim.clone(), listener);
        eventually("reconnected", || status.connected()).await;
        sim.pulse(&[0x20]).await;
        gw.until("the second pass", |e| passes(e, Direction::In) == 2)
            .await;
        sim.more_reads(3).await;
        gw.drain();
        assert_eq!(passes(&gw.events, Direction::In), 2);

        stop(&shutdown, driver).await;
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_sink_stops_the_driver() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Sim::new(&[1]);
        sim.with(|m| {
            m.holding.insert(0x10, 7);
        });
        let server = start_tcp(sim.clone(), listener);
        let bus = bus(
            "tcp-io",
            BusTarget::Tcp {
                host: addr.to_string(),
            },
            vec![counter(
                "gate",
                Direction::In,
                1,
                Register::HoldingRegister,
                0x10,
                16,
            )],
        );
        let (sink, rx) = EventSink::channel(1);
        drop(rx);
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(Box::new(bus).run(sink, shutdown.clone()));
        let done = tokio::time::timeout(DEADLINE, driver).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        assert!(!shutdown.is_cancelled());
        server.abort();
    }
}
