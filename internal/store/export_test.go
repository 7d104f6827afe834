package store

// SetBeforeTxn lets the external tests run f just before each transaction
// is sent (to lose its answer on purpose).
func SetBeforeTxn(s *Store, f func()) { s.beforeTxn = f }
