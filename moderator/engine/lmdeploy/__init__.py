"""`engine.kind: lmdeploy`: guard models on LMDeploy's TurboMind (CUDA only)."""
