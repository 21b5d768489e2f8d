"""``python -m export.gpu_check``, as documented before the GPU checks moved to export/gpu/."""

from export.gpu.gpu_check import main

if __name__ == "__main__":
    main()
