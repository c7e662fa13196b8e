"""RegistryService: the model registry's gRPC contract, served in the trainer process.

`gate` decides whether an evaluation run is evidence for a promotion, `eval_runs` fetches the run from the
eval service, `servicer` moves aliases only through the gate (or by force, with a reason, on the record).
"""
