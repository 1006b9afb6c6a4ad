"""ppkd: knowledge distillation for PaddleDetection models.

Importing ppkd before paddle lets it choose the CPU thread count: Paddle
trains on one thread unless OMP_NUM_THREADS says otherwise, so ppkd defaults
it to every core (a user's own setting wins).
"""
import os
import warnings

os.environ.setdefault('OMP_NUM_THREADS', str(os.cpu_count() or 1))
# Paddle warns at import that ccache is missing, which only matters when
# compiling custom operators; ppkd compiles none.
warnings.filterwarnings('ignore', message='No ccache found')

__version__ = '0.1.0'
