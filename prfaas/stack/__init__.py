"""A whole PrfaaS-PD deployment on this machine: the `Topology` (what runs, with which settings) and the
`LocalStack` that starts each service as its own process and stops them all."""

from prfaas.stack.launcher import LocalStack, Service, Site, wait_healthy
from prfaas.stack.topology import CLUSTERS, RouterBackends, Topology

__all__ = ["CLUSTERS", "LocalStack", "RouterBackends", "Service", "Site", "Topology", "wait_healthy"]
