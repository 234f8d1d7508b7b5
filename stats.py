"""The statistics the criteria and the tests share: Eq. 2's bounds and the predecessor paper's mix/skip/overwrite
regions (METHOD.md section 3), and the tests of ablate.py and tuning.py, on scipy.stats where it has them.

Imports nothing of the project's.
"""

import numpy as np

EQ2_LOW, EQ2_HIGH = 2 / 3, 3 / 2  # Eq. 2's bounds on the mix ratio (METHOD.md section 3), strict at both ends


def mix_regions(m):
    """The predecessor's spectrum with Eq. 2's bounds and strictness, elementwise: (overwrite m <= 2/3,
    mix 2/3 < m < 3/2 (Eq. 2 holds), skip m >= 3/2) as three boolean arrays."""
    m = np.asarray(m, dtype=np.float64)
    mix = (m > EQ2_LOW) & (m < EQ2_HIGH)
    return m <= EQ2_LOW, mix, m >= EQ2_HIGH
