"""Traffic shaping (issue 22): per-(egress source, site) limits and rates, shared by the
workers of a machine (`throttle`: the `local` backend) or of a cluster. Invariant: a
throttle's answer never fails a delivery; without its shared table, limits hold per process."""
