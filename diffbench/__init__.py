"""diffbench: benchmark diffusion and flow-model samplers."""
