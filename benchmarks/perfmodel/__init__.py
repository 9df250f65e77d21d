"""The performance model of the fused kernels (benchmarks/model.py is its command line).

plan.py asks the C++ dispatchers which kernels a case launches; resources.py reads registers,
shared memory and SASS of the built kernels; kernels.py costs each launch; predict.py adds host
time and baselines per case; calibrate.py fits the constants on measured runs.
"""
