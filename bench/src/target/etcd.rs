//! The etcd target (`--target etcd://H:P[,H:P...]`, cargo feature `etcd`): the same
//! workloads against an etcd v3 cluster through `etcd-client` (gRPC), so Tessera and
//! etcd can be compared in one run on one machine. Worker `w` has its own client (its
//! own HTTP/2 connection) to address `w % n`; etcd forwards writes to its leader.
//!
//! Reads are linearizable unless `--read-consistency stale` (serializable reads);
//! etcd has no client-side lease read, so `lease` is served linearizably. Scans are
//! ordered range reads from the start key (`from_key` with a limit).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client as EtcdClient, ConnectOptions, GetOptions, KvClient};

use super::{BoxFuture, CONNECT_TIMEOUT, Client, ReadConsistency, Target, TargetError, TargetInfo};

/// The etcd target over a list of member addresses.
#[derive(Debug)]
pub struct EtcdTarget {
    addrs: Vec<String>,
    read_consistency: ReadConsistency,
    connect_timeout: Duration,
}

impl EtcdTarget {
    /// Checks that every member answers a read (failing fast with the one that does
    /// not), then returns the target.
    pub async fn open(
        addrs: Vec<String>,
        read_consistency: ReadConsistency,
    ) -> Result<Self, TargetError> {
        assert!(!addrs.is_empty(), "an etcd target needs an address");
        let target = EtcdTarget {
            addrs,
            read_consistency,
            connect_timeout: CONNECT_TIMEOUT,
        };
        for addr in &target.addrs {
            let mut kv = target.kv_client(addr).await?;
            let probe = tokio::time::timeout(
                target.connect_timeout,
                kv.get(
                    "tessera-bench/probe",
                    Some(GetOptions::new().with_serializable()),
                ),
            );
            match probe.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(TargetError::Connect {
                        addr: addr.clone(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                Err(_) => {
                    return Err(TargetError::ConnectTimeout {
                        addr: addr.clone(),
                        timeout_ms: target.connect_timeout.as_millis() as u64,
                    });
                }
            }
        }
        Ok(target)
    }

    async fn kv_client(&self, addr: &str) -> Result<KvClient, TargetError> {
        let options = ConnectOptions::new().with_connect_timeout(self.connect_timeout);
        let endpoint = format!("http://{addr}");
        let connect = EtcdClient::connect([endpoint], Some(options));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(client)) => Ok(client.kv_client()),
            Ok(Err(e)) => Err(TargetError::Connect {
                addr: addr.into(),
                source: std::io::Error::other(e.to_string()),
            }),
            Err(_) => Err(TargetError::ConnectTimeout {
                addr: addr.into(),
                timeout_ms: self.connect_timeout.as_millis() as u64,
            }),
        }
    }
}

impl Target for EtcdTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: format!("etcd://{}", self.addrs.join(",")),
            nodes: Some(self.addrs.len() as u32),
            ranges: Some(1),
            fsync: None,
            tls: Some(false),
            read_consistency: Some(self.read_consistency),
            storage: None,
            network: None,
            leaders_on: None,
        }
    }

    fn connect(&self, worker: usize) -> BoxFuture<'_, Result<Box<dyn Client>, TargetError>> {
        Box::pin(async move {
            let kv = self
                .kv_client(&self.addrs[worker % self.addrs.len()])
                .await?;
            let serializable = self.read_consistency == ReadConsistency::Stale;
            Ok(Box::new(EtcdWorker { kv, serializable }) as Box<dyn Client>)
        })
    }
}

struct EtcdWorker {
    kv: KvClient,
    serializable: bool,
}

fn etcd_error(e: etcd_client::Error) -> TargetError {
    let kind = match &e {
        etcd_client::Error::GRpcStatus(status) => format!("grpc:{:?}", status.code()),
        etcd_client::Error::TransportError(_) => "transport".to_string(),
        etcd_client::Error::IoError(_) => "io".to_string(),
        _ => "etcd".to_string(),
    };
    TargetError::Other {
        kind,
        message: e.to_string(),
    }
}

impl EtcdWorker {
    fn read_options(&self) -> GetOptions {
        if self.serializable {
            GetOptions::new().with_serializable()
        } else {
            GetOptions::new()
        }
    }
}

impl Client for EtcdWorker {
    fn get<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Bytes>, TargetError>> {
        Box::pin(async move {
            let options = self.read_options();
            let resp = self.kv.get(key, Some(options)).await.map_err(etcd_error)?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| Bytes::copy_from_slice(kv.value())))
        })
    }

    fn put<'a>(
        &'a mut self,
        key: &'a [u8],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            self.kv.put(key, value, None).await.map_err(etcd_error)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<bool, TargetError>> {
        Box::pin(async move {
            let resp = self.kv.delete(key, None).await.map_err(etcd_error)?;
            Ok(resp.deleted() > 0)
        })
    }

    fn scan<'a>(
        &'a mut self,
        start: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, TargetError>> {
        Box::pin(async move {
            let options = self.read_options().with_from_key().with_limit(limit as i64);
            let resp = self
                .kv
                .get(start, Some(options))
                .await
                .map_err(etcd_error)?;
            Ok(resp
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        Bytes::copy_from_slice(kv.key()),
                        Bytes::copy_from_slice(kv.value()),
                    )
                })
                .collect())
        })
    }

    fn retries(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}
