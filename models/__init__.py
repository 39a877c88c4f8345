"""Model side: grid and tasks, backbone factory (tiny | flux), LoRA trainer, sampler, judges, synthetic world.

Works on images, arrays and paths handed to it; imports nothing from storage/, tasks/ or flows/."""
