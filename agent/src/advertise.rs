//! Find the address this node advertises to the swarm (`advertise_addr` setting).

use crate::cloud::{self, CloudError};
use crate::config::AdvertiseSpec;
use crate::retry::{self, Policy};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The metadata service can lag at early boot; give it this long before failing.
const METADATA_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error("cannot read {path}: {source}")]
    Routes {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no IPv4 default route to pick the advertise address from: set advertise_addr to \
         interface:NAME or an IP"
    )]
    NoDefaultRoute,
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    #[error(
        "interface {0} has no IPv4 address: check the name (ip -4 addr) or set advertise_addr to an IP"
    )]
    NoAddress(String),
    #[error("cannot get the private address from the {provider} metadata service: {source}")]
    Metadata {
        provider: &'static str,
        #[source]
        source: retry::Failure<CloudError>,
    },
}

/// Resolve the spec to one address.
pub async fn resolve(spec: &AdvertiseSpec) -> Result<IpAddr, AdvertiseError> {
    match spec {
        AdvertiseSpec::Ip(ip) => Ok(*ip),
        AdvertiseSpec::Interface(name) => interface_ipv4(name).map(IpAddr::V4),
        AdvertiseSpec::Auto => {
            let routes = std::fs::read_to_string("/proc/net/route").map_err(|source| {
                AdvertiseError::Routes {
                    path: "/proc/net/route",
                    source,
                }
            })?;
            let iface = default_route_interface(&routes).ok_or(AdvertiseError::NoDefaultRoute)?;
            interface_ipv4(&iface).map(IpAddr::V4)
        }
        AdvertiseSpec::Cloud(kind) => {
            let provider = cloud::provider(*kind);
            let ip = retry::retry(
                Policy::RELAXED.with_deadline(METADATA_DEADLINE),
                &format!("read the private address from {} metadata", provider.name()),
                CloudError::is_transient,
                || provider.private_ipv4(),
            )
            .await
            .map_err(|source| AdvertiseError::Metadata {
                provider: provider.name(),
                source,
            })?;
            Ok(IpAddr::V4(ip))
        }
    }
}

/// The interface of the IPv4 default route with the lowest metric, from `/proc/net/route`.
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let up = flags & 0x1 != 0;
            if f[1] == "00000000" && f[7] == "00000000" && up {
                Some((f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
            } else {
                None
            }
        })
        .min()
        .map(|(_, iface)| iface)
}

fn interface_ipv4(name: &str) -> Result<Ipv4Addr, AdvertiseError> {
    let addrs = if_addrs::get_if_addrs().map_err(AdvertiseError::Interfaces)?;
    addrs
        .into_iter()
        .filter(|i| i.name == name)
        .find_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some(v4.ip),
            _ => None,
        })
        .ok_or_else(|| AdvertiseError::NoAddress(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
eth9\t00000000\t0100000A\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\tFE0012C6\t0003\t0\t0\t100\t00000000\t0\t0\t0
";

    #[test]
    fn default_route_lowest_metric() {
        assert_eq!(default_route_interface(ROUTES).as_deref(), Some("eth0"));
        let header_only = ROUTES.lines().next().unwrap();
        assert_eq!(default_route_interface(header_only), None);
    }

    #[tokio::test]
    async fn loopback_interface_and_literal() {
        let ip = resolve(&AdvertiseSpec::Interface("lo".into()))
            .await
            .unwrap();
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let err = resolve(&AdvertiseSpec::Interface("nonexistent0".into()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nonexistent0"));
        let lit = resolve(&AdvertiseSpec::Ip("198.18.0.3".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(lit.to_string(), "198.18.0.3");
    }
}
