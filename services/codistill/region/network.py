"""How a region reaches its peers, chosen by whoever launches it.

`InProcessNetwork`: every region in one process; deliveries go straight into
peers' inboxes (with the gRPC serialisation round trip, so the math is the
same). `GrpcNetwork`: each region serves gRPC and finds its peers through a
directory of addresses, where a restarted region re-registers. Either may
carry fedavg's weight hub (`average`).
"""

from __future__ import annotations

from typing import Callable

import grpc

from codistill.config import ExchangeConfig
from codistill.region import serde
from codistill.region.client import GrpcTransport
from codistill.region.exchange import Average
from codistill.region.inbox import PeerInbox
from codistill.region.node import RegionNode
from codistill.region.transport import DeferredTransport, InProcessTransport, Transport


class InProcessNetwork:
    def __init__(self, exchange: ExchangeConfig, average: Average | None = None):
        self.encoding, self.average = serde.Encoding.from_config(exchange), average
        self._inboxes: dict[int, PeerInbox] = {}

    def serve(self, node: RegionNode) -> None:
        """No sockets in-process."""

    def peer_versions(self, node: RegionNode, peers: tuple[int, ...]) -> dict[int, int]:
        """In-process regions are never restored while their peers run on: nothing to ask."""
        return {}

    def register(self, node: RegionNode) -> None:
        assert node.inbox is not None, "register a region once its inbox is prepared"
        self._inboxes[node.id] = node.inbox

    def transport(self, node: RegionNode, targets: tuple[int, ...]) -> Transport:
        return DeferredTransport(lambda: InProcessTransport({j: self._inboxes[j] for j in targets}, self.encoding))


class GrpcNetwork:
    def __init__(
        self,
        host: str,
        register: Callable[[int, str, str | None], None],
        lookup: Callable[[int], str | None],
        average: Average | None = None,
    ):
        self.host, self._register, self.lookup, self.average = host, register, lookup, average

    def serve(self, node: RegionNode) -> None:
        node.serve(self.host)

    def register(self, node: RegionNode) -> None:
        """Peers find `node` from now on: only once its inbox takes their messages."""
        self._register(node.id, node.address, node.metrics_address)

    def peer_versions(self, node: RegionNode, peers: tuple[int, ...]) -> dict[int, int]:
        """Where each reachable peer is now (its published version); a peer that does not answer is left out."""
        out = {}
        for peer in peers:
            address = self.lookup(peer)
            if address is None:
                continue
            try:
                out[peer] = node.peer_status(address).version
            except grpc.RpcError:  # restarting too, or gone: its rounds will come, or the round timeout ends the wait
                continue
        return out

    def transport(self, node: RegionNode, targets: tuple[int, ...]) -> Transport:
        return DeferredTransport(lambda: node.grpc_transport({j: self.lookup(j) for j in targets}, resolve=self.lookup))
