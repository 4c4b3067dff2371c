"""Clips → labelled examples: clip lists (`manifest`), section downloads (`download`), ffmpeg decoding
(`media`), teachers (`teacher`), the demo's clips (`demo_clips`), the labelling core every runner shares
(`labelling`), and its runners: one process (`runner`) and Apache Beam (`beam`)."""
