"""Prior terms: fixed log-odds ``pi[s, k]`` in physical units, noise anchors, mask combiners.

Each module holds one idea (see DESIGN.md, "The model", step 2):

- :mod:`support`  -- band support in Hz and wavelet-scale support;
- :mod:`harmonic` -- f0 tracking and the harmonic comb;
- :mod:`noise`    -- noise-floor estimates (MAD, minimum statistics);
- :mod:`lines`    -- steady tones (radar targets' Doppler lines) found by CLEAN;
- :mod:`learned`  -- per-group offsets read from a safetensors file;
- :mod:`combine`  -- softmax / sigmoid masks and hard locks.
"""
