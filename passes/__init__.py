"""crossgraph.passes: graph-to-graph rewrites (fusion, quantization, sharding). None are registered yet."""
