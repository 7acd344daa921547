"""Raw-audio modelling on top of `core`: files -> mono float32 -> 8-bit classes -> windows -> model.

- `io`: read (soundfile, downmix, soxr resample to the rate you name) / parse a folder / write 16-bit wav;
- `mulaw`: SaShiMi's 8-bit mu-law with per-clip scaling (256 classes, 128 = silence);
- `linear`: 8-bit linear quantisation with the same scaling (SaShiMi's Beethoven); `quantize`: both by name;
- `sc09`: Speech Commands digit folders split by the official validation/test lists;
- `manifests`: the audio data sets of data_manifests, fetched through `core.data`;
- `datasets`: fixed-length examples from short clips (pad/crop) or long files (windows), split by file;
- `generation`: sampling through the model's recurrent `step`, bits per sample (also against context length);
- `cli`: the `mamba-audio pretrain | bpb | generate | fetch` commands.

`sample_data/` holds 54 short 8 kHz speech clips of one voice (CC-BY-SA-3.0, see ATTRIBUTION.txt).
"""
