package distlock

// WithoutObservability makes a Manager without any logging, metrics or
// tracing hooks: the baseline the overhead benchmarks compare against.
func WithoutObservability() Option {
	return func(c *managerConfig) { c.obs.off = true }
}
