"""Reading and writing datasets: the files stages exchange and the layouts of preference data."""
