"""The commands of `flowshard`, one module per group, loaded on demand by jobs.cli.LazyGroup:
build (build, pretrain-flow, demo), datasets (verify, inspect, versions, diff, report,
export, clips), flow (flow-check), train (train, evaluate, features), recipes (recipes)."""
