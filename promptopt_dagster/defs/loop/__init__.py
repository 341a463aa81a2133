"""The loop area: the eight assets of one iteration (baseline prompt to best prompt), the
`optimize_iteration` job, what follows an iteration (`chain.py`: the next iteration or the final report,
and the tags a chain of runs carries), and the sensors: the iteration sensor, which chains the runs,
and the one that fails runs of a killed CLI process."""
