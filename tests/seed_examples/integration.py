# Initialize at start of batch
manager = MemoryManager(device, memory_threshold=0.8)

# Process images
for image_path in image_paths:
    # Estimate memory needed
    estimate = manager.estimate_memory_required(image.size)
    
    # Process image
    result = process_image(image_path)
    
    # Clean up after each image
    manager.clear_cache()
    
    # Periodically check and trigger GC
    manager.trigger_gc_if_needed()
