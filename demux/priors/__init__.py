"""Prior terms: fixed log-odds ``pi[s, k]`` in physical units, noise anchors, mask combiners.

Each module holds one idea (see DESIGN.md, "The model", step 2):

- :mod:`support`  -- band support in Hz and wavelet-scale support;
- :mod:`harmonic` -- f0 tracking and the harmonic comb;
- :mod:`noise`    -- noise-floor estimates (MAD, minimum statistics);
- :mod:`lines`    -- steady tones (radar targets' Doppler lines) found by CLEAN, and multipath ghosts;
- :mod:`beats`    -- R peaks and a per-beat time prior for ECG on wavelet levels;
- :mod:`direction` -- talkers' directions at a linear array and per-bin plane-wave log-odds;
- :mod:`components` -- statistics of independent components (skewness, band share) for EEG;
- :mod:`learned`  -- per-group offsets read from a safetensors file;
- :mod:`combine`  -- softmax / sigmoid masks and hard locks.
"""
