"""Benchmarks and the GPU check for fastdrop; results under bench/results/."""
