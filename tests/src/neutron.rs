//! A real neutron-server in the test bed: Neutron 29 from PyPI with this repository's ML2
//! driver (`neutron-plugin/`), writing to the cloud's etcd.
//!
//! ```text
//!   netns dvrt-<pid>-<n>-ul   etcd http://192.0.2.254:2379
//!                              neutron-server http://127.0.0.1:9696 (python -m
//!                              networking_dvr_ebpf.devserver: wsgiref, SQLite, noauth)
//!                              |
//!   netns ...-h1   dvr-agent --host h1-<pid>-<n> --etcd ... --tunnel-ip ... --agent-mode ...
//! ```
//!
//! [`Cloud::start_registered_agents`] starts etcd and one agent per host that registers
//! itself (no host is written by the test bed); [`Cloud::start_neutron`] starts the server in
//! the underlay namespace with its state in the cloud's temp dir (a restart keeps the
//! database). [`Cloud::neutron`] is an API client ([`NeutronApi`]) whose requests are made
//! from a thread in the underlay namespace. The tests play Nova's part: they create ports
//! with `binding:host_id`, and [`Cloud::adopt_network`] and [`Cloud::plug_port`] then make the
//! VM's namespace and tap from what Neutron allocated (MAC, addresses), so the traffic helpers
//! work on them as on any VM. The virtual environment is the one `cargo xtask setup` makes
//! (`DVR_NEUTRON_VENV`, default `target/neutron-venv`).
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::cloud::{Cidr, Cloud, NetInfo, Vm, tap_name};
use crate::cmd::{ChildGuard, wait_until};
use crate::external::{EXT_CIDR, EXT_GATEWAY, EXT_IFACE, PHYSNET};

/// Where the server listens, in the underlay namespace.
pub const NEUTRON_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9696);
/// How long the server gets to answer after a start (about 5 s on an idle 2-core machine).
pub const NEUTRON_READY_DEADLINE: Duration = Duration::from_secs(120);
/// The plugin's periodic full resync in the test bed (seconds): an hour, so that what
/// reaches etcd comes from the driver's hooks (and the resyncs of a new leader, of an etcd
/// restart or after a failed write); [`Cloud::start_neutron_resyncing`] sets another.
pub const RESYNC_INTERVAL: u32 = 3600;
/// The plugin leader's lease (seconds).
pub const LEADER_TTL: u32 = 3;
/// One API request's deadline.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopped server gets after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The Neutron virtual environment `cargo xtask setup` made.
pub fn neutron_venv() -> Result<PathBuf> {
    let venv = match std::env::var_os("DVR_NEUTRON_VENV") {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("neutron-venv"),
    };
    ensure!(
        venv.join("bin").join("python").exists(),
        "no Neutron virtual environment at {} (DVR_NEUTRON_VENV): run `cargo xtask setup`, \
         which installs Neutron 29 from neutron-plugin/requirements.lock and the plugin",
        venv.display()
    );
    Ok(venv)
}

/// The running (or stopped) neutron-server of a cloud.
pub struct NeutronServer {
    guard: Option<ChildGuard>,
    state_dir: PathBuf,
    starts: u32,
}

impl std::fmt::Debug for NeutronServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeutronServer")
            .field("state_dir", &self.state_dir)
            .field("starts", &self.starts)
            .finish_non_exhaustive()
    }
}

impl NeutronServer {
    /// Stops the server (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut g = self
            .guard
            .take()
            .ok_or_else(|| anyhow!("neutron-server is not running"))?;
        Ok(g.stop(STOP_GRACE)?.0)
    }

    pub fn running(&self) -> bool {
        self.guard.is_some()
    }
}

/// The Neutron API, called from a thread in the underlay namespace.
#[derive(Clone, Debug)]
pub struct NeutronApi {
    ns: String,
}

impl NeutronApi {
    /// One request; the JSON answer (`Null` for an empty body). An HTTP error status is an
    /// error naming the request and Neutron's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let what = format!("{method} {path}");
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} /v2.0{path} HTTP/1.1\r\nHost: {NEUTRON_ADDR}\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n\
             {body}",
            body.len()
        );
        let reply = crate::bench::netns::in_netns(&self.ns, move || {
            let mut s = TcpStream::connect_timeout(&NEUTRON_ADDR.into(), REQUEST_DEADLINE)?;
            s.set_read_timeout(Some(REQUEST_DEADLINE))?;
            s.write_all(request.as_bytes())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow!("{what}: the request thread panicked"))?
        .with_context(|| what.clone())?;
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("{what}: no HTTP header in {text:?}"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{what}: bad status line in {head:?}"))?;
        ensure!(
            (200..300).contains(&status),
            "{what}: HTTP {status}: {}",
            body.trim()
        );
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(body).with_context(|| format!("{what}: answer {body:?}"))
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, None).map(|_| ())
    }

    /// `POST /<kind>s` with `{kind: fields}`; the created resource.
    pub fn create(&self, kind: &str, fields: Value) -> Result<Value> {
        let v = self.call("POST", &format!("/{kind}s"), Some(&json!({ kind: fields })))?;
        v.get(kind)
            .cloned()
            .ok_or_else(|| anyhow!("POST /{kind}s answered without {kind}: {v}"))
    }

    /// `PUT /<kind>s/<id>` with `{kind: fields}`; the updated resource.
    pub fn update(&self, kind: &str, id: &str, fields: Value) -> Result<Value> {
        let path = format!("/{kind}s/{id}");
        let v = self.call("PUT", &path, Some(&json!({ kind: fields })))?;
        v.get(kind)
            .cloned()
            .ok_or_else(|| anyhow!("PUT {path} answered without {kind}: {v}"))
    }

    /// `GET /<kind>s/<id>`.
    pub fn show(&self, kind: &str, id: &str) -> Result<Value> {
        let path = format!("/{kind}s/{id}");
        let v = self.get(&path)?;
        v.get(kind)
            .cloned()
            .ok_or_else(|| anyhow!("GET {path} answered without {kind}: {v}"))
    }

    /// Every resource of `kind` (`GET /<kind>s`), by id.
    pub fn list(&self, kind: &str) -> Result<BTreeMap<String, Value>> {
        let plural = format!("{kind}s");
        let v = self.get(&format!("/{plural}"))?;
        Ok(v[&plural]
            .as_array()
            .ok_or_else(|| anyhow!("GET /{plural}: no list in {v}"))?
            .iter()
            .filter_map(|r| Some((r["id"].as_str()?.to_string(), r.clone())))
            .collect())
    }

    /// Waits until port `id` has `status` (e.g. "ACTIVE"); returns how long that took.
    pub fn wait_port_status(&self, id: &str, status: &str, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_until(&format!("port {id} {status} in Neutron"), deadline, |why| {
            let p = self.show("port", id)?;
            *why = format!("status {}", p["status"]);
            Ok((p["status"] == status).then(|| start.elapsed()))
        })
    }
}

/// The first fixed IP of `port` of the given family, with its subnet id.
pub fn fixed_ip(port: &Value, v6: bool) -> Option<(std::net::IpAddr, String)> {
    port["fixed_ips"].as_array()?.iter().find_map(|f| {
        let ip: std::net::IpAddr = f["ip_address"].as_str()?.parse().ok()?;
        (ip.is_ipv6() == v6).then(|| (ip, f["subnet_id"].as_str().unwrap_or_default().into()))
    })
}

/// A tenant network made through the API, with its subnets.
#[derive(Clone, Debug)]
pub struct NeutronNet {
    pub network: Value,
    pub subnet: Value,
    pub subnet6: Option<Value>,
}

/// The `id` of a resource.
pub fn id_of(v: &Value) -> Result<&str> {
    str_of(v, "id")
}

fn str_of<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v[field]
        .as_str()
        .ok_or_else(|| anyhow!("no string field {field} in {v}"))
}

impl Cloud {
    /// A tenant network (VXLAN, VNI chosen by Neutron) with an IPv4 subnet and, with
    /// `cidr6`, a SLAAC IPv6 subnet, made through the API and adopted as `name`.
    pub fn neutron_network(
        &mut self,
        name: &str,
        cidr: &str,
        cidr6: Option<&str>,
    ) -> Result<NeutronNet> {
        let api = self.neutron();
        let network = api.create("network", json!({ "name": name }))?;
        let id = network["id"].clone();
        let subnet = api.create(
            "subnet",
            json!({"network_id": id, "cidr": cidr, "ip_version": 4, "enable_dhcp": false}),
        )?;
        let subnet6 = cidr6
            .map(|cidr6| {
                api.create(
                    "subnet",
                    json!({"network_id": id, "cidr": cidr6, "ip_version": 6,
                           "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
                )
            })
            .transpose()?;
        let network = api.show("network", id_of(&network)?)?;
        self.adopt_network(name, &network, &subnet, subnet6.as_ref())?;
        Ok(NeutronNet {
            network,
            subnet,
            subnet6,
        })
    }

    /// The flat external network `public` on the test bed's `br-ext` ([`EXT_CIDR`] via
    /// [`EXT_GATEWAY`]); floating IPs and router gateways from 10.5.2.1-10.5.2.250.
    pub fn neutron_external_network(&self) -> Result<Value> {
        let api = self.neutron();
        let ext = api.create(
            "network",
            json!({"name": "public", "router:external": true,
                   "provider:network_type": "flat", "provider:physical_network": PHYSNET}),
        )?;
        api.create(
            "subnet",
            json!({"network_id": ext["id"], "cidr": EXT_CIDR, "ip_version": 4,
                   "gateway_ip": EXT_GATEWAY.to_string(), "enable_dhcp": false,
                   "allocation_pools": [{"start": "10.5.2.1", "end": "10.5.2.250"}]}),
        )?;
        Ok(ext)
    }

    /// A distributed router `name`, with a gateway on `external` if given, and an interface
    /// on every subnet of `networks`; returns the router as Neutron shows it after.
    pub fn neutron_router(
        &self,
        name: &str,
        external: Option<&Value>,
        networks: &[&NeutronNet],
    ) -> Result<Value> {
        let api = self.neutron();
        let mut fields = json!({ "name": name });
        if let Some(ext) = external {
            fields["external_gateway_info"] = json!({ "network_id": ext["id"] });
        }
        let router = api.create("router", fields)?;
        let rid = id_of(&router)?;
        for net in networks {
            for s in std::iter::once(&net.subnet).chain(net.subnet6.as_ref()) {
                api.call(
                    "PUT",
                    &format!("/routers/{rid}/add_router_interface"),
                    Some(&json!({ "subnet_id": s["id"] })),
                )?;
            }
        }
        api.show("router", rid)
    }

    /// Nova's part: a port on the adopted network `network` bound on `host`, checked bound
    /// as a tap, the VM plugged ([`Cloud::plug_port`]), then the port ACTIVE in Neutron (the
    /// agent reported it) within `deadline`. Returns the port as created.
    pub fn boot(
        &mut self,
        vm: &str,
        host: &str,
        network: &str,
        deadline: Duration,
    ) -> Result<Value> {
        let api = self.neutron();
        let agent = self.host(host)?.agent_name.clone();
        let network_id = self.network(network)?.network_id.clone();
        let port = api.create(
            "port",
            json!({"network_id": network_id, "name": vm, "binding:host_id": agent,
                   "device_owner": "compute:nova", "device_id": format!("vm-{vm}")}),
        )?;
        ensure!(
            port["binding:vif_type"] == "tap",
            "{vm}'s port is bound as a tap on {agent}: {port}"
        );
        self.plug_port(vm, host, network, &port)?;
        let took = api.wait_port_status(id_of(&port)?, "ACTIVE", deadline)?;
        eprintln!("dvr-tests: {vm}'s port ACTIVE {took:?} after its tap came up");
        Ok(port)
    }

    /// Waits until router `router`'s centralized role is held (`ha/<router>` in etcd); the
    /// holder's agent name.
    pub fn snat_holder(&self, router: &str, deadline: Duration) -> Result<String> {
        wait_until(
            &format!("router {router}'s SNAT role elected"),
            deadline,
            |_| {
                Ok(self
                    .etcd_json(&format!("/dvr/v1/ha/{router}"))?
                    .and_then(|v| v["host"].as_str().map(str::to_string)))
            },
        )
    }

    /// Starts etcd and one agent per host, each registering itself (see
    /// [`Cloud::start_registered_agent`]).
    pub fn start_registered_agents(&mut self, deadline: Duration) -> Result<()> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        let start = Instant::now();
        for h in &names {
            self.start_registered_agent(h, deadline.saturating_sub(start.elapsed()))?;
        }
        Ok(())
    }

    /// Starts (etcd if needed, and) `host`'s agent registering itself (`--tunnel-ip`,
    /// `--agent-mode`, `--external-interface` with the external network) instead of reading
    /// a hosts list; waits until its entry is in etcd and the agent is ready. The host's
    /// `dvr_mac` becomes the one the agent allocated.
    pub fn start_registered_agent(&mut self, host: &str, deadline: Duration) -> Result<()> {
        if self.etcd.is_none() {
            self.start_etcd()?;
        }
        self.agents_use_etcd()?;
        let h = self
            .hosts
            .iter_mut()
            .find(|h| h.name == host)
            .ok_or_else(|| anyhow!("no host {host}"))?;
        if !h.agent_args.iter().any(|a| a == "--tunnel-ip") {
            h.agent_args.extend(
                [
                    "--tunnel-ip",
                    &h.tunnel_ip.to_string(),
                    "--agent-mode",
                    h.mode.as_str(),
                ]
                .map(str::to_string),
            );
            if h.ext.is_some() {
                h.agent_args
                    .extend(["--external-interface", EXT_IFACE].map(str::to_string));
            }
        }
        let agent = h.agent_name.clone();
        self.start_agent(host)?;
        let start = Instant::now();
        let entry = wait_until(&format!("{host}'s host entry in etcd"), deadline, |_| {
            self.etcd_json(&format!("/dvr/v1/hosts/{agent}"))
        })?;
        let mac = str_of(&entry, "dvr_mac")?.to_string();
        if let Some(info) = self.hosts.iter_mut().find(|x| x.name == host) {
            info.dvr_mac = mac;
        }
        self.wait_agent_ready(host, deadline.saturating_sub(start.elapsed()))
    }

    /// Starts neutron-server (again, on the same database after [`Cloud::stop_neutron`]) in
    /// the underlay namespace and waits until its API answers. Needs etcd.
    pub fn start_neutron(&mut self) -> Result<()> {
        self.start_neutron_resyncing(RESYNC_INTERVAL)
    }

    /// [`Cloud::start_neutron`] with a periodic full resync every `interval` seconds.
    pub fn start_neutron_resyncing(&mut self, interval: u32) -> Result<()> {
        let venv = neutron_venv()?;
        let etcd = self.etcd_url()?;
        let etcd = etcd.trim_start_matches("http://").to_string();
        let state_dir = self.dir.join("neutron");
        let server = self.neutron.get_or_insert_with(|| NeutronServer {
            guard: None,
            state_dir: state_dir.clone(),
            starts: 0,
        });
        ensure!(server.guard.is_none(), "neutron-server is already running");
        server.starts += 1;
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let out = state_dir.join(format!("server-{}.out", server.starts));
        let err = state_dir.join(format!("server-{}.err", server.starts));
        let mut cmd = Command::new("nsenter");
        // nsenter execs python: the child's pid is the server's.
        cmd.arg(format!("--net=/run/netns/{}", self.underlay_ns))
            .arg(venv.join("bin").join("python"))
            .args(["-m", "networking_dvr_ebpf.devserver", "--state-dir"])
            .arg(&state_dir)
            .arg("--listen")
            .arg(NEUTRON_ADDR.to_string())
            .arg("--etcd")
            .arg(&etcd)
            .arg("--resync-interval")
            .arg(interval.to_string())
            .arg("--leader-ttl")
            .arg(LEADER_TTL.to_string())
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).with_context(|| format!("{}", out.display()))?)
            .stderr(fs::File::create(&err).with_context(|| format!("{}", err.display()))?);
        let child = cmd.spawn().context("starting neutron-server")?;
        server.guard = Some(ChildGuard::new(child, "neutron-server"));
        let start = Instant::now();
        let res = wait_until("neutron-server to answer", NEUTRON_READY_DEADLINE, |why| {
            if let Some(g) = self.neutron.as_mut().and_then(|s| s.guard.as_mut())
                && let Some(status) = g.try_wait()?
            {
                bail!("neutron-server exited ({status}):\n{}", tail_of(&err, 30));
            }
            let said = fs::read_to_string(&out).unwrap_or_default();
            *why = format!("stdout {said:?}");
            Ok(said.contains("ready ").then_some(()))
        });
        match res {
            Ok(()) => {
                eprintln!(
                    "dvr-tests: neutron-server ready after {:?}",
                    start.elapsed()
                );
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "neutron-server log:\n{}",
                tail_of(&state_dir.join("neutron.log"), 30)
            ))),
        }
    }

    /// Stops neutron-server (its database stays for the next start).
    pub fn stop_neutron(&mut self) -> Result<ExitStatus> {
        self.neutron
            .as_mut()
            .ok_or_else(|| anyhow!("neutron-server was never started"))?
            .stop()
    }

    /// The API client.
    pub fn neutron(&self) -> NeutronApi {
        NeutronApi {
            ns: self.underlay_ns.clone(),
        }
    }

    /// neutron-server's log (oslo.log's file).
    pub fn neutron_log(&self) -> Result<String> {
        let dir = &self
            .neutron
            .as_ref()
            .ok_or_else(|| anyhow!("neutron-server was never started"))?
            .state_dir;
        let path = dir.join("neutron.log");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Makes a Neutron network known to the test bed as `name` (for [`Cloud::plug_port`]):
    /// its VNI, its IPv4 subnet `subnet` and, if given, its IPv6 subnet `subnet6`.
    pub fn adopt_network(
        &mut self,
        name: &str,
        network: &Value,
        subnet: &Value,
        subnet6: Option<&Value>,
    ) -> Result<()> {
        ensure!(self.network(name).is_err(), "network {name} adopted twice");
        let cidr = Cidr::parse(str_of(subnet, "cidr")?)?;
        let gateway: Ipv4Addr = str_of(subnet, "gateway_ip")?.parse()?;
        let v6 = match subnet6 {
            Some(s) => {
                let (net, prefix) = str_of(s, "cidr")?
                    .split_once('/')
                    .ok_or_else(|| anyhow!("subnet {s}: bad cidr"))?;
                Some(crate::ipv6::Net6Info::adopted(
                    str_of(s, "id")?,
                    net.parse()?,
                    prefix.parse()?,
                    str_of(s, "gateway_ip")?.parse()?,
                    s["ipv6_address_mode"].as_str(),
                ))
            }
            None => None,
        };
        let vni = network["provider:segmentation_id"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| anyhow!("network {name}: no provider:segmentation_id in {network}"))?;
        let mtu = network["mtu"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1450);
        self.networks.push(NetInfo::new(
            name,
            str_of(network, "id")?,
            str_of(subnet, "id")?,
            vni,
            cidr,
            gateway,
            v6,
            mtu,
        ));
        Ok(())
    }

    /// Nova's part once Neutron bound `port` on `host`: the VM `vm`'s namespace with the
    /// port's MAC and addresses, and its tap (`tap` + port id[:11]) in the host's namespace,
    /// up last. `network` is the name given to [`Cloud::adopt_network`].
    pub fn plug_port(&mut self, vm: &str, host: &str, network: &str, port: &Value) -> Result<()> {
        ensure!(self.vm(vm).is_err(), "VM {vm} plugged twice");
        let net = self.network(network)?.clone();
        let id = str_of(port, "id")?.to_string();
        let ip = match fixed_ip(port, false) {
            Some((std::net::IpAddr::V4(ip), _)) => ip,
            _ => bail!("port {id} has no IPv4 address: {port}"),
        };
        let ip6: Option<Ipv6Addr> = match fixed_ip(port, true) {
            Some((std::net::IpAddr::V6(ip), _)) => Some(ip),
            _ => None,
        };
        let v = Vm {
            name: vm.into(),
            ns: String::new(),
            host: host.into(),
            network: network.into(),
            ip,
            prefix: net.cidr.prefix,
            mac: str_of(port, "mac_address")?.to_lowercase(),
            tap: tap_name(&id),
            port_id: id,
            ip6,
        };
        self.create_vm_links(&v)
    }

    /// The state the plugin wrote to etcd, as one document (`dvrctl apply`'s shape).
    pub fn etcd_state(&self) -> Result<Value> {
        let url = self.etcd_url()?;
        let kvs = crate::bench::netns::in_netns(&self.underlay_ns, move || {
            dvr_userspace::source::etcd::read_state(&url).map_err(|e| anyhow!("{e}"))
        })
        .join()
        .map_err(|_| anyhow!("reading etcd: the thread panicked"))??;
        let doc = dvr_userspace::source::from_kvs(&kvs).map_err(|e| anyhow!("{e}"))?;
        serde_json::from_str(&doc).context("the state in etcd")
    }

    /// How many entries of `host`'s maps differ from a compile of the state in etcd with the
    /// HA election as etcd holds it now (0: exactly those entries, nothing stale).
    pub fn etcd_map_differences(&self, host: &str) -> Result<usize> {
        let state = self.etcd_state()?;
        let url = self.etcd_url()?;
        let holders = crate::bench::netns::in_netns(&self.underlay_ns, move || {
            dvr_userspace::source::etcd::ha_holders(&url).map_err(|e| anyhow!("{e}"))
        })
        .join()
        .map_err(|_| anyhow!("reading etcd: the thread panicked"))??;
        let me = self.host(host)?.agent_name.clone();
        let ha = dvr_userspace::compile::HaRuntime {
            active_here: holders
                .iter()
                .filter(|(_, h)| h.host == me)
                .map(|(r, _)| r.clone())
                .collect(),
            holders: holders.into_iter().map(|(r, h)| (r, h.host)).collect(),
        };
        let want = self.compiled_entries_with(host, &state, Some(&ha))?;
        let maps = dvr_userspace::maps::HostMaps::open(&self.pin_dir(host)?)?;
        Ok(dvr_userspace::reconcile::differences(&maps, &want)?)
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
