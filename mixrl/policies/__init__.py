"""Policy heads, critics and the math of their densities: nn.Modules and pure functions, no training loops."""
