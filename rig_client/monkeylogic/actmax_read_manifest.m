function stimuli = actmax_read_manifest(folder)
% ACTMAX_READ_MANIFEST  The stimuli of one batch folder, in presentation order.
%   STIMULI is a struct array with fields order (number), stimulus_id, kind and file
%   (full path of the PNG). Reads manifest.csv; works in MATLAB and GNU Octave.
fid = fopen(fullfile(folder, 'manifest.csv'), 'r');
if fid < 0
    error('actmax:manifest', 'no manifest.csv in %s', folder);
end
cleanup = onCleanup(@() fclose(fid));
header = strsplit(strtrim(fgetl(fid)), ',');
if ~isequal(header, {'order', 'stimulus_id', 'kind', 'file'})
    error('actmax:manifest', 'unexpected manifest.csv header in %s', folder);
end
stimuli = struct('order', {}, 'stimulus_id', {}, 'kind', {}, 'file', {});
line = fgetl(fid);
while ischar(line)
    line = strtrim(line);
    if ~isempty(line)
        cells = strsplit(line, ',');  % ids made by actmax contain no commas
        stimuli(end + 1) = struct('order', str2double(cells{1}), 'stimulus_id', cells{2}, ...
                                  'kind', cells{3}, 'file', fullfile(folder, cells{4})); %#ok<AGROW>
    end
    line = fgetl(fid);
end
end
