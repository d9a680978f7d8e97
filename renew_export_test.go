package distlock

// Scheduled returns how many Lock handles the Manager's scheduler holds.
func (m *Manager) Scheduled() int { return m.sched.scheduled() }
