//! A simulated Modbus I/O module (discrete inputs and holding registers) that the tests serve
//! over a pseudo-terminal (RTU) or TCP on 127.0.0.1, and can switch silent.

use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};

const WAIT: Duration = Duration::from_secs(20);

/// A simulated I/O module: 4 active-low discrete inputs at 0x20..0x23 and holding registers.
#[derive(Default)]
struct ModuleState {
    /// Raw input levels (true = 1 on the wire).
    inputs: [bool; 4],
    holding: BTreeMap<u16, u16>,
    /// Requests answered so far.
    served: u64,
    /// Not answering at all (a module that lost power, a cut RS-485 pair).
    silent: bool,
    /// Requests left unanswered while silent.
    ignored: u64,
}

#[derive(Clone)]
pub struct Module {
    slave: u8,
    state: Arc<Mutex<ModuleState>>,
}

impl Module {
    pub fn new(slave: u8) -> Module {
        let m = Module {
            slave,
            state: Arc::new(Mutex::new(ModuleState::default())),
        };
        // Active-low: idle inputs read 1.
        m.state.lock().unwrap().inputs = [true; 4];
        m
    }

    pub fn served(&self) -> u64 {
        self.state.lock().unwrap().served
    }

    pub fn set_input(&self, i: usize, closed: bool) {
        self.state.lock().unwrap().inputs[i] = !closed;
    }

    pub fn set_holding(&self, addr: u16, v: u16) {
        self.state.lock().unwrap().holding.insert(addr, v);
    }

    /// Wait until the gateway has read the module `n` more times.
    pub async fn seen(&self, n: u64) {
        let start = self.served();
        assert!(
            super::eventually(WAIT, || self.served() >= start + n).await,
            "the gateway keeps polling"
        );
    }

    /// Stop answering (requests time out at the gateway), or answer again.
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Requests left unanswered while silent.
    pub fn ignored(&self) -> u64 {
        self.state.lock().unwrap().ignored
    }

    /// Serve this module over Modbus TCP on 127.0.0.1 (an ephemeral port) until the task is
    /// aborted.
    pub async fn serve_tcp(&self) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let m = self.clone();
        let task = tokio::spawn(async move {
            let s = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream, addr| {
                let m = m.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, |_| {
                        Ok(Some(m.clone()))
                    })
                }
            };
            let _ = s.serve(&on_connected, |_| {}).await;
        });
        (addr, task)
    }
}

impl tokio_modbus::server::Service for Module {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut s = self.state.lock().unwrap();
        if s.silent {
            s.ignored += 1;
            return ready(Ok(None));
        }
        if req.slave != self.slave {
            // Another module on the bus would answer; this one stays silent.
            return ready(Ok(None));
        }
        s.served += 1;
        ready(match req.request {
            Request::ReadDiscreteInputs(addr, n) => {
                let bits: Option<Vec<bool>> = (addr..addr.saturating_add(n))
                    .map(|a| {
                        a.checked_sub(0x20)
                            .and_then(|i| s.inputs.get(usize::from(i)).copied())
                    })
                    .collect();
                bits.map(|b| Some(Response::ReadDiscreteInputs(b)))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadHoldingRegisters(addr, n) => Ok(Some(Response::ReadHoldingRegisters(
                (addr..addr.saturating_add(n))
                    .map(|a| s.holding.get(&a).copied().unwrap_or(0))
                    .collect(),
            ))),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}
