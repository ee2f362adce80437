"""How an optimizer runs: on flat buffers (flat, fused) and sharded across devices, with ZeRO-1 (sharding).

May import: ``adamfx._src.core`` (and the stages' public protocol through it).
"""
