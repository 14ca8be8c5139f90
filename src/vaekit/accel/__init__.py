"""Only there for speed, never for a result: the fused Adam (adam), the training step built ahead of time (aot) and
the evaluation graph rewrites (graph_rewrites)."""
