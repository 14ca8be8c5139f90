"""What a run shows: figures (plots/), the HTML report, image grids, samples and the demo job."""
