set terminal pngcairo size 900,560 font 'sans,11'
set logscale x 2
set grid
set key top left
set xlabel 'requests in flight'
set xtics ('1' 1, '8' 8, '32' 32, '128' 128)
set xrange [0.714286:179.2]
set output 'throughput.png'
set title 'points ops/s (durable on 2 of 3)'
set ylabel 'ops/s'
set logscale y
set format y '%.0f'
plot 'plot.dat' index 0 using 1:2 with linespoints lw 2 title 'Tally', 'plot.dat' index 1 using 1:2 with linespoints lw 2 title 'PostgreSQL', 'plot.dat' index 2 using 1:2 with linespoints lw 2 title 'etcd', 'plot.dat' index 3 using 1:2 with lines dt 2 lc rgb 'gray40' title 'flush bound (rounds/s x in flight)'
set format y '%g'
set output 'p99.png'
set title 'p99 latency of a points op'
set ylabel 'p99 latency (ms)'
set logscale y
plot 'plot.dat' index 0 using 1:3 with linespoints lw 2 title 'Tally', 'plot.dat' index 1 using 1:3 with linespoints lw 2 title 'PostgreSQL', 'plot.dat' index 2 using 1:3 with linespoints lw 2 title 'etcd'
