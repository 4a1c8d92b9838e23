"""Session recording to HDF5: the file layout (:mod:`.layout`), the SWMR writer (:mod:`.writer`),
the graph node (:mod:`.recorder`) and the reader (:mod:`.reader`). See ``docs/recording.md``."""
