"""What every stage shares: settings (`config`), errors, the file-system layer (`storage`: local paths,
`gs://`, `ram://`, atomic writes), one owner per directory (`lock`) and the console (quiet start-up, progress)."""
