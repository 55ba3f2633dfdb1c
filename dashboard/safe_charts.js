// fraudstream: appended to datasette-dashboards 0.8.0's dashboards.js by the project's Datasette
// plugin (fraudstream/datasette_plugin.py). Upstream builds table cells, metric values and map
// popups with innerHTML, so a merchant name such as <img src=x onerror=...> would run as script
// in the analyst's browser. These declarations come later in the same script, so they replace
// upstream's: every value from the data is set as textContent, never parsed as markup, and
// invisible or direction-changing characters are shown as <U+202E> rather than obeyed.

const HIDDEN_CHARACTERS = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu

function shownText(value) {
  const text = value === null || value === undefined ? '' : String(value)
  return text.replace(HIDDEN_CHARACTERS,
    c => `<U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}>`)
}

function textElement(tag, value) {
  const element = document.createElement(tag)
  element.textContent = shownText(value)
  return element
}

async function fetchChartData(chart, query_string, absolute_url) {
  const results = await fetch(getDataUrl(chart, query_string, absolute_url))
  return await results.json()
}

function mountChart(chart_slug, data, wrapper) {
  document.querySelector(`#chart-${chart_slug}`).appendChild(wrapper)
  if (data.truncated) {
    enableChartTooltip(chart_slug)
  }
}

async function renderMetricChart(chart_slug, chart, query_string, absolute_url, full_height) {
  const data = await fetchChartData(chart, query_string, absolute_url)
  const metric = data.rows[0][chart.display.field]
  const p = textElement('p', `${chart.display.prefix || ''}${metric}${chart.display.suffix || ''}`)
  Object.assign(p.style, { fontSize: '2.2rem', fontWeight: '900' })
  const wrapper = document.createElement('div')
  Object.assign(wrapper.style, {
    width: '100%', height: '100%', display: 'flex', flexDirection: 'column',
    justifyContent: 'center', alignItems: 'center', overflow: 'hidden',
    whiteSpace: 'nowrap', textOverflow: 'ellipsis'
  })
  wrapper.appendChild(p)
  mountChart(chart_slug, data, wrapper)
}

async function renderTableChart(chart_slug, chart, query_string, absolute_url, full_height) {
  const data = await fetchChartData(chart, query_string, absolute_url)
  const table = document.createElement('table')
  const header = table.createTHead().insertRow()
  Object.keys(data.rows[0] || {}).forEach(col => header.appendChild(textElement('th', col)))
  const body = table.createTBody()
  data.rows.forEach(row => {
    const tr = body.insertRow()
    Object.values(row).forEach(value => tr.appendChild(textElement('td', value)))
  })
  const wrapper = document.createElement('div')
  Object.assign(wrapper.style, { width: '100%', height: '100%', overflow: 'auto' })
  wrapper.appendChild(table)
  mountChart(chart_slug, data, wrapper)
}

async function renderMapChart(chart_slug, chart, query_string, absolute_url, full_height) {
  document.addEventListener('DOMContentLoaded', async () => {
    const data = await fetchChartData(chart, query_string, absolute_url)
    const wrapper = document.createElement('div')
    Object.assign(wrapper.style, { width: '100%', height: '100%', minHeight: '200px' })
    mountChart(chart_slug, data, wrapper)

    const map = L.map(wrapper, { zoom: 12 })
    map.addLayer(L.tileLayer('https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png', {
      maxZoom: 19,
      detectRetina: true,
      attribution: '&copy; <a href="https://openstreetmap.org/copyright">OpenStreetMap contributors</a>'
    }))
    const options = chart.display || {}
    const lat = options.latitude_column || 'latitude'
    const lng = options.longitude_column || 'longitude'
    data.rows.forEach(row => {
      const popup = document.createElement('div')
      Object.entries(row)
        .filter(([key]) => (key === lat || key === lng) ? options.show_latlng_popup : true)
        .forEach(([key, value]) => {
          const name = textElement('span', `${key}: `)
          name.style.fontWeight = 'bold'
          popup.append(name, shownText(value), document.createElement('br'))
        })
      map.addLayer(L.marker([row[lat], row[lng]]).bindPopup(popup))
    })
    map.fitBounds(new L.LatLngBounds(data.rows.map(row => [row[lat], row[lng]])))
  })
}
