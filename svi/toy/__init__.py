"""The toy-scale reproduction: world-invariant drift metrics, batched rollouts, the `make demo` driver."""
