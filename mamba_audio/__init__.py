"""Raw-audio modelling on top of `core`: files -> mono float32 -> mu-law classes -> windows -> model.

- `io`: read (soundfile, downmix, soxr resample to the rate you name) / parse a folder / write 16-bit wav;
- `mulaw`: SaShiMi's 8-bit mu-law with per-clip scaling (256 classes, 128 = silence);
- `datasets`: fixed-length examples from short clips (pad/crop) or long files (windows), split by file;
- `generation`: sampling through the model's recurrent `step`, bits per sample (also against context length);
- `cli`: the `mamba-audio pretrain | bpb | generate` commands.

`sample_data/` holds 54 short 8 kHz speech clips of one voice (CC-BY-SA-3.0, see ATTRIBUTION.txt).
"""
