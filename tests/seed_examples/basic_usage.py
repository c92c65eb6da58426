import torch
from memscope import MemoryManager

# Initialize with device
device = torch.device("mps")  # or "cuda" or "cpu"
manager = MemoryManager(device, memory_threshold=0.8)

# Clear GPU cache after processing an image
manager.clear_cache()

# Check current memory usage
usage = manager.check_memory_usage()
print(f"Memory usage: {usage:.2%}")

# Trigger garbage collection if needed
manager.trigger_gc_if_needed()

# Estimate memory for an image
estimate = manager.estimate_memory_required((1024, 1024))
print(f"Estimated memory: {estimate / 1024**2:.1f} MB")
