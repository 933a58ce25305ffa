"""meksd's benchmark harness (not tests: it prints figures). See BENCHMARKS.md."""
