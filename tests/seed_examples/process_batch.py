import torch
from memscope import MemoryManager

def process_batch(image_paths, device):
    """Process a batch of images with memory management."""
    manager = MemoryManager(device, memory_threshold=0.8)
    
    results = []
    for i, image_path in enumerate(image_paths):
        # Load and process image
        image = load_image(image_path)
        
        # Estimate memory
        estimate = manager.estimate_memory_required(image.size)
        print(f"Processing {image_path} (estimated {estimate/1024**2:.1f}MB)")
        
        # Process
        result = colorize_image(image)
        results.append(result)
        
        # Clean up
        manager.clear_cache()
        
        # Check memory every 5 images
        if (i + 1) % 5 == 0:
            usage = manager.check_memory_usage()
            print(f"Memory usage after {i+1} images: {usage:.2%}")
            manager.trigger_gc_if_needed()
    
    return results
